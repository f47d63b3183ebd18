"""Training beyond one device: tf.distribute strategies (`strategies`) and the per-stream state
each replica keeps (`replicas`). Imports nothing itself: the models import `replicas` only."""
