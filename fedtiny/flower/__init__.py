"""Interop with Flower (flwr): fedtiny devices and fleets inside a Flower federation."""
