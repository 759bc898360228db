"""The PyTorch backend's parts: `torch.autograd` over the model's weights."""
