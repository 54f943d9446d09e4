"""Training: tensors from the protocol, the loop with early stopping, and run directories."""
