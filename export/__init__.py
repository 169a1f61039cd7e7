"""The SavedModel a Trainer exports: serving signatures and the recommendation tables."""
import os

# TFRS and our Keras code need Keras 2; the flag must be set before TensorFlow is
# imported, in every process that imports this package (Beam workers included).
os.environ["TF_USE_LEGACY_KERAS"] = "1"
