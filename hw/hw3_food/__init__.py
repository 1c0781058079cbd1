"""HW3 Food-11 image classification."""
