"""The gradient-noise probe on JAX: `jax.grad` over Keras's stateless API.

The maths lives in `noise.py` and the sampling of batches in `gradients.py`;
this module only computes the squared norms of mean gradients at two batch
sizes, in one jitted function that reads the model's variable values and
writes none. Under a `keras.distribution.DataParallel` over several devices
each device differentiates its own shard of the batch (`jax.shard_map`), and
the per-device gradients before their reduction are the small batches
(AdaptDL's method).
"""

import jax
import jax.numpy as jnp
import keras
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from keras_batchtune.backend.common import gradients as common

# The name Keras gives the state variable of each `keras.random.SeedGenerator`.
_SEED_STATE_NAME = "seed_generator_state"


def _is_jax_array(value):
    return isinstance(value, jax.Array)


def data_parallel_devices(distribution=None):
    """The devices a `keras.distribution.DataParallel` splits each batch over.

    Example:

    ```python
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    data_parallel_devices()  # 8 on a TPU v2-8 or v3-8
    ```

    Args:
        distribution: A `keras.distribution.Distribution`, or None for the
            one set with `keras.distribution.set_distribution`.

    Returns:
        The size of the mesh axis the batch dimension is sharded over, for a
        `DataParallel` distribution; 1 without one, or for another
        distribution (`ModelParallel` shards weights too: the probe then
        measures as on one device).
    """
    if distribution is None:
        distribution = keras.distribution.distribution()
    if not isinstance(distribution, keras.distribution.DataParallel):
        return 1
    mesh = distribution.device_mesh
    axis = list(mesh.axis_names).index(distribution.batch_dim_name)
    return int(mesh.shape[axis])


class GradientNoiseProbe:
    """Squared norms of mean gradients at a small and a large batch size.

    Calling the probe on one large batch of `large_batch_size` examples
    computes the gradient of the model's compiled loss (regularization
    losses included, as in `fit`) over the trainable weights on each of its
    consecutive small batches of `small_batch_size` examples, and returns
    the mean of their squared norms `|G_small|^2` and the squared norm of
    their mean, which is the large batch's gradient, `|G_big|^2`. The
    forward pass runs in training mode (dropout, batch statistics), as in
    `fit`, through Keras's stateless API (`model.compute_loss_and_updates`,
    the function Keras's JAX `train_step` differentiates) inside
    `jax.grad`: the variable values go in, and the updated non-trainable
    and metric values that come out are dropped, so nothing is written: no
    weight, no optimizer state, no batch-norm statistic, seed state or
    metric. The small batches run in one `jax.lax.scan`, jitted once per
    probe (JAX traces again only if the shapes change), so the probe can
    be called every epoch, even from a callback in the middle of `fit`
    (it first syncs the training state back into the model, as Keras's
    callbacks do).

    Under a `keras.distribution.DataParallel` over `n > 1` devices (set
    when the probe is made), the large batch is sharded over the devices
    as `fit` shards it, and each device runs the scan over the small
    batches of its own `large_batch_size / n` examples with no
    communication (`jax.shard_map` over the batch axis of the mesh); one
    all-reduce of the summed gradients and of one scalar then gives both
    norms (AdaptDL's method, Pollux, arXiv 2008.12260): the probe costs a
    forward and backward pass over the large batch, split across the
    devices. `num_replicas` is `n`, and `large_batch_size` must be a
    multiple of `n * small_batch_size`. Each device draws its own dropout
    masks (the seed states are folded with the device index). Without a
    distribution, or under another one, the probe measures as on one
    device (`num_replicas` is 1; XLA places the computation).

    Example:

    ```python
    probe = GradientNoiseProbe(model, small_batch_size=32,
                               large_batch_size=512)
    small_sq_norm, large_sq_norm = probe(x[:512], y[:512])
    ```

    Args:
        model: A compiled Keras model (JAX backend).
        small_batch_size: Positive integer, `B_small`.
        large_batch_size: Positive integer, a multiple of
            `small_batch_size` (times the devices of a `DataParallel`).

    Raises:
        ValueError: naming the argument, if a batch size is not a positive
            integer, `small_batch_size >= large_batch_size`, or
            `large_batch_size` is not a multiple of `small_batch_size`
            (times the devices of a `DataParallel`); if the model is not
            compiled or has no trainable weights.
    """

    def __init__(self, model, *, small_batch_size, large_batch_size):
        distribution = keras.distribution.distribution()
        replicas = data_parallel_devices(distribution)
        small, large = common.check_probe_arguments(
            model, small_batch_size, large_batch_size, num_replicas=replicas
        )
        self.model = model
        self.small_batch_size = small
        self.large_batch_size = large
        self.num_replicas = replicas
        self._built = False
        if replicas > 1:
            self._mesh = distribution.device_mesh.backend_mesh
            self._axis = distribution.batch_dim_name
            self._function = jax.jit(self._sharded_squared_norms)
        else:
            self._function = jax.jit(self._squared_norms)

    def _small_batch_loss(
        self, trainable, non_trainable, metrics, optimizer, batch
    ):
        """The unscaled loss of one small batch, and the new state."""
        x, y, sample_weight = batch
        _, (loss, _, non_trainable, _) = self.model.compute_loss_and_updates(
            trainable,
            non_trainable,
            metrics,
            x,
            y,
            sample_weight,
            training=True,
            optimizer_variables=optimizer,
        )
        return loss.astype("float32"), non_trainable

    def _summed_gradients(
        self, trainable, non_trainable, metrics, optimizer, batch
    ):
        """The scan over the small batches of `batch`.

        Returns:
            The sum of their gradients (float32, one per trainable weight),
            the sum of their squared norms, and their number.
        """
        small = self.small_batch_size
        count = jax.tree_util.tree_leaves(batch)[0].shape[0] // small

        def split(tensor):
            # (count * small, ...) -> (count, small, ...).
            return jnp.reshape(tensor, (count, small) + tensor.shape[1:])

        small_batches = jax.tree_util.tree_map(split, batch)
        gradient = jax.grad(self._small_batch_loss, has_aux=True)

        def step(carry, small_batch):
            grad_sum, small_sq_sum, state = carry
            grads, state = gradient(
                trainable, state, metrics, optimizer, small_batch
            )
            grads = [g.astype("float32") for g in grads]
            small_sq_sum += sum(jnp.sum(g * g) for g in grads)
            grad_sum = [a + g for a, g in zip(grad_sum, grads)]
            return (grad_sum, small_sq_sum, state), None

        zeros = [jnp.zeros(jnp.shape(w), "float32") for w in trainable]
        initial = (zeros, jnp.zeros((), "float32"), non_trainable)
        (grad_sum, small_sq_sum, _), _ = jax.lax.scan(
            step, initial, small_batches
        )
        return grad_sum, small_sq_sum, count

    def _squared_norms(self, *state_and_batch):
        """Traced once: the scan over the small batches of one batch."""
        grad_sum, small_sq_sum, count = self._summed_gradients(*state_and_batch)
        large_sq = sum(jnp.sum((g / count) ** 2) for g in grad_sum)
        return small_sq_sum / count, large_sq

    def _sharded_squared_norms(
        self, trainable, non_trainable, metrics, optimizer, batch
    ):
        """Traced once: each device's scan over its shard, then one reduce."""
        axis = self._axis
        seed_states = self._seed_states

        def per_device(trainable, non_trainable, metrics, optimizer, batch):
            # Each device its own dropout masks: fold its index into every
            # seed state (raw threefry key data, uint32[2]).
            index = jax.lax.axis_index(axis)
            non_trainable = [
                jax.random.key_data(
                    jax.random.fold_in(jax.random.wrap_key_data(value), index)
                )
                if is_seed
                else value
                for value, is_seed in zip(non_trainable, seed_states)
            ]
            grad_sum, small_sq_sum, count = self._summed_gradients(
                trainable, non_trainable, metrics, optimizer, batch
            )
            # The only communication: the reduction a training step makes
            # anyway, plus one scalar.
            grad_sum = jax.lax.psum(grad_sum, axis)
            small_sq_sum = jax.lax.psum(small_sq_sum, axis)
            count = count * self.num_replicas
            large_sq = sum(jnp.sum((g / count) ** 2) for g in grad_sum)
            return small_sq_sum / count, large_sq

        replicated = PartitionSpec()
        return jax.shard_map(
            per_device,
            mesh=self._mesh,
            in_specs=(replicated,) * 4 + (PartitionSpec(axis),),
            out_specs=(replicated, replicated),
            check_vma=False,
        )(trainable, non_trainable, metrics, optimizer, batch)

    def _shard(self, batch):
        """Places a batch as `fit` does: split over the mesh's batch axis."""
        sharding = NamedSharding(self._mesh, PartitionSpec(self._axis))

        def place(tensor):
            if tensor is None:
                return None
            host = np.asarray(tensor)
            return jax.make_array_from_callback(
                host.shape, sharding, lambda index: host[index]
            )

        return jax.tree_util.tree_map(place, batch)

    def __call__(self, x, y=None, sample_weight=None):
        """Measures one large batch.

        Args:
            x: Inputs of exactly `large_batch_size` examples (numpy array,
                JAX array, another framework's CPU tensor, or a dict/list of
                them).
            y: Targets, or None.
            sample_weight: Sample weights, or None.

        Returns:
            The pair `(small_sq_norm, large_sq_norm)` of floats:
            `|G_small|^2` averaged over the small batches, and `|G_big|^2`.

        Raises:
            ValueError: if the batch does not hold `large_batch_size`
                examples.
        """
        batch = common.to_backend_tensors((x, y, sample_weight), _is_jax_array)
        common.check_batch_size(batch[0], self.large_batch_size)
        model = self.model
        # During `fit`, the training state lives outside the model's
        # variables between steps; put it back first (a no-op otherwise).
        model.jax_state_sync()
        if not self._built:
            common.build_for_probe(
                model,
                *common.take_examples(batch, 0, self.small_batch_size),
            )
            self._seed_states = tuple(
                v.name == _SEED_STATE_NAME
                and tuple(v.shape) == (2,)
                and v.dtype == "uint32"
                for v in model.non_trainable_variables
            )
            self._built = True
        if self.num_replicas > 1:
            batch = self._shard(batch)
        optimizer = model.optimizer
        small_sq, large_sq = self._function(
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in model.metrics_variables],
            [v.value for v in optimizer.variables] if optimizer else None,
            batch,
        )
        return float(small_sq), float(large_sq)
