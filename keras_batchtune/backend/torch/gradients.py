"""The gradient-noise probe on PyTorch: `torch.autograd.grad`, no update.

The maths lives in `noise.py` and the sampling of batches in `gradients.py`;
this module only computes the squared norms of mean gradients at two batch
sizes with `torch.autograd.grad`, without updating anything.
"""

import inspect

import torch

from keras_batchtune.backend.common import gradients as common


def _is_torch_tensor(value):
    return isinstance(value, torch.Tensor)


class GradientNoiseProbe:
    """Squared norms of mean gradients at a small and a large batch size.

    Calling the probe on one large batch of `large_batch_size` examples
    computes the gradient of the model's compiled loss (regularization
    losses included, as in `fit`) over the trainable weights on each of its
    consecutive small batches of `small_batch_size` examples, and returns
    the mean of their squared norms `|G_small|^2` and the squared norm of
    their mean, which is the large batch's gradient, `|G_big|^2`. The
    forward pass runs in training mode (dropout, batch statistics), as in
    `fit`; the gradients come from `torch.autograd.grad` over the weights'
    torch tensors, which leaves their `.grad` alone, and nothing is
    updated: no weight, no optimizer state, and the non-trainable
    variables (batch-norm moving statistics, seed generator states) and
    metric variables are restored after each call. The probe can be called
    every epoch.

    PyTorch models have no `tf.distribute` strategy: the probe measures on
    one replica, and `num_replicas` is 1.

    Example:

    ```python
    probe = GradientNoiseProbe(model, small_batch_size=32,
                               large_batch_size=512)
    small_sq_norm, large_sq_norm = probe(x[:512], y[:512])
    ```

    Args:
        model: A compiled Keras model (PyTorch backend).
        small_batch_size: Positive integer, `B_small`.
        large_batch_size: Positive integer, a multiple of
            `small_batch_size`.

    Raises:
        ValueError: naming the argument, if a batch size is not a positive
            integer, `small_batch_size >= large_batch_size`, or
            `large_batch_size` is not a multiple of `small_batch_size`; if
            the model is not compiled or has no trainable weights.
    """

    def __init__(self, model, *, small_batch_size, large_batch_size):
        small, large = common.check_probe_arguments(
            model, small_batch_size, large_batch_size
        )
        self.model = model
        self.small_batch_size = small
        self.large_batch_size = large
        self.num_replicas = 1
        self._built = False
        self._loss_has_training_arg = (
            "training" in inspect.signature(model.compute_loss).parameters
        )

    def _small_batch_gradients(self, x, y, sample_weight, weights):
        """The float32 gradients of one small batch's loss."""
        model = self.model
        y_pred = model(x, training=True)
        kwargs = {"training": True} if self._loss_has_training_arg else {}
        loss = model.compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, **kwargs
        )
        tensors = [weight.value for weight in weights]
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        return [
            torch.zeros_like(t, dtype=torch.float32)
            if g is None
            else g.detach().to(torch.float32)
            for g, t in zip(grads, tensors)
        ]

    def _squared_norms(self, batch):
        weights = list(self.model.trainable_weights)
        small = self.small_batch_size
        count = self.large_batch_size // small
        grad_sum = None
        small_sq_sum = 0.0  # a tensor after the first small batch
        for index in range(count):
            x, y, sample_weight = common.take_examples(
                batch, index * small, (index + 1) * small
            )
            grads = self._small_batch_gradients(x, y, sample_weight, weights)
            small_sq_sum = small_sq_sum + sum(torch.sum(g * g) for g in grads)
            if grad_sum is None:
                grad_sum = grads
            else:
                grad_sum = [a + g for a, g in zip(grad_sum, grads)]
        large_sq = float(sum(torch.sum((g / count) ** 2) for g in grad_sum))
        return float(small_sq_sum) / count, large_sq

    def __call__(self, x, y=None, sample_weight=None):
        """Measures one large batch.

        Args:
            x: Inputs of exactly `large_batch_size` examples (numpy array,
                torch tensor, another framework's CPU tensor, or a dict/list
                of them).
            y: Targets, or None.
            sample_weight: Sample weights, or None.

        Returns:
            The pair `(small_sq_norm, large_sq_norm)` of floats:
            `|G_small|^2` averaged over the small batches, and `|G_big|^2`.

        Raises:
            ValueError: if the batch does not hold `large_batch_size`
                examples.
        """
        batch = common.to_backend_tensors(
            (x, y, sample_weight), _is_torch_tensor
        )
        common.check_batch_size(batch[0], self.large_batch_size)
        if not self._built:
            common.build_for_probe(
                self.model,
                *common.take_examples(batch, 0, self.small_batch_size),
            )
            self._built = True
        snapshot = common.VariableSnapshot(self.model)
        try:
            # Even when called under `torch.no_grad()`.
            with torch.enable_grad():
                return self._squared_norms(batch)
        finally:
            snapshot.restore()
