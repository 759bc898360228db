"""What the tuner can batch itself, on every backend (no TensorFlow needed).

`tf.data.Dataset` inputs are tested in `backend/test_tf_data.py`.
"""

import keras
import numpy as np
import pytest
from conftest import BACKEND

from keras_batchtune import data

X = np.zeros((100, 4), "float32")
Y = np.zeros((100,), "int32")


class Batches(keras.utils.PyDataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        return X, Y


def test_fixed_batch_inputs_are_refused_with_the_allowed_types():
    for fixed in (Batches(), iter([(X, Y)]), (batch for batch in [(X, Y)])):
        with pytest.raises(ValueError, match="`x`.*unbatched") as error:
            data.check_batchable(fixed)
        assert type(fixed).__name__ in str(error.value)
    backend_tensor = keras.ops.convert_to_tensor(X)
    for accepted in (X, backend_tensor, {"a": X}, [X, X], None):
        data.check_batchable(accepted)


@pytest.mark.skipif(BACKEND != "torch", reason="a PyTorch DataLoader")
def test_torch_data_loader_is_refused():
    import torch

    tensors = torch.utils.data.TensorDataset(
        torch.from_numpy(X), torch.from_numpy(Y)
    )
    loader = torch.utils.data.DataLoader(tensors, batch_size=10)
    with pytest.raises(ValueError, match="DataLoader") as error:
        data.check_batchable(loader)
    message = str(error.value)
    assert "fixed" in message and "arrays or tensors of its dataset" in message


def test_count_examples():
    assert data.count_examples(X) == 100
    assert data.count_examples(keras.ops.convert_to_tensor(X)) == 100
    assert data.count_examples({"a": X, "b": X}) == 100
    assert data.count_examples(X, validation_split=0.25) == 75
    assert data.count_examples(None) is None


def test_arrays_are_not_datasets():
    for value in (X, keras.ops.convert_to_tensor(X), [X], None, Batches()):
        assert not data.is_tf_dataset(value)
