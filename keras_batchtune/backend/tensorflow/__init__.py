"""The TensorFlow backend's parts: `tf.distribute`, `tf.GradientTape`."""
