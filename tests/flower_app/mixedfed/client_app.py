"""fedtiny's ClientApp on fedtiny nodes; an ordinary Flower numpy client on 'kind="numpy"' nodes."""
import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedtiny.flower.clientapp import app as fedtiny_app

app = ClientApp()


def numpy_train(msg: Message, context: Context) -> Message:
    """The numpy quickstart's train: the global arrays, a local change, the new arrays back."""
    ndarrays = msg.content["arrays"].to_numpy_ndarrays()
    # Simulate local training: a small seeded perturbation (float64, as numpy computes it)
    rng = np.random.default_rng([context.node_id, msg.content["config"]["server-round"]])
    model = [m + 0.01 * rng.standard_normal(m.shape) for m in ndarrays]
    metrics = {"num-examples": int(context.node_config["num-examples"])}
    content = RecordDict({"arrays": ArrayRecord(model), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    if context.node_config.get("kind") == "numpy":
        return numpy_train(msg, context)
    return fedtiny_app(msg, context)
