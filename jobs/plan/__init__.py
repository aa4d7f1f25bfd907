"""`pai-distil plan`'s job side: a stage's training step traced at real shapes on fake tensors."""
