"""What every layer shares: the project's error base class and progress lines."""
import os

# TFRS and our Keras code need Keras 2; the flag must be set before TensorFlow is
# imported, in every process that imports this package (Beam workers included).
os.environ["TF_USE_LEGACY_KERAS"] = "1"
