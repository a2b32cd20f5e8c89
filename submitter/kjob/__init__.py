"""kjob: distributed ResNeXt/ResNeSt training jobs for Kubeflow's MPIJob and PyTorchJob."""

__version__ = "0.1.0"
