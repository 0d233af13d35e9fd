"""The MLflow model's code, logged as MLflow's "model from code": loading the model runs this
file (with foldwise's package beside it), so no pickled Python object is ever deserialised."""
import mlflow

from foldwise.deploy.mlmodel import BaggedModel

mlflow.models.set_model(BaggedModel())
