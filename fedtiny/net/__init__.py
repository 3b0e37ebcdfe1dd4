"""The wire and the programs that speak it: frames (`wire`, `session`), staged ingest (`ingest`),
device keys (`keys`), the aggregator's checkpoint (`state`), and the programs `aggregator`,
`client`, `bridge` and `demo`. Helpers the programs share live in `common`; programs never
import each other, except `demo`, which composes an aggregator and clients.
"""
