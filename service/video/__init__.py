"""Video clips → tracked pose: streaming decode, keyframes and propagation, tracking, smoothing,
overlay rendering, and the jobs that run them."""
