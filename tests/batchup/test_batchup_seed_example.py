"""The seed document's examples (batchup's "Loading images from disk on-the-fly" and
"Parallel processing for faster batching"), run on generated images.

The seed code below is copied unchanged except:
* the import: ``from concurrent_dataloader.batchup import data_source, work_pool`` instead of
  ``from batchup import data_source, work_pool``;
* two syntax typos in the seed fixed: the missing ``)`` closing ``raise TypeError(...)`` in both
  accessors, and ``for p in image_paths)]`` -> ``for p in image_paths]``;
* ``PATH`` points at the generated images, ``train_y`` (which the seed "assumes") is made
  here, and the loop bodies ("# Process batches here...") collect the batches to check them.

The accessors and ``augment_batch`` stay at module level, as the seed requires for processes.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.batchup.helpers import FileImageDataset, write_images
from concurrent_dataloader.batchup import DatasetAccessor
from concurrent_dataloader.batchup import data_source, work_pool

# ---- seed code (verbatim apart from the fixes listed above) -----------------------------------
import six
import numpy as np
from PIL import Image

class ImageFileAccessor (object):
    def __init__(self, paths):
        # Paths is a list of file paths
        self.paths = paths

    # We have to imlement the `__len__` method:
    def __len__(self):
        return len(self.paths)

    # We have to implement the `__getitem__` method that
    # `ArrayDataSource` will use to get samples
    def __getitem__(self, index):
        # Check if its a built-in Python integer *or* a NumPy
        # integer type
        if isinstance(index, six.integer_types + (np.integer,)):
            return self._load_image(self.paths[index])
        elif isinstance(index, np.ndarray):
            if index.ndim != 1:
                raise ValueError(
                    'index array should only have 1 dimension, '
                    'not {}'.format(index.ndim))
            images = [self._load_image(self.paths[i]) for i in index]
            return np.stack(images, axis=0)
        else:
            raise TypeError('index should be an integer or a NumPy '
                            'array, not a {}'.format(type(index)))

    # Define a helper method for loading an image
    def _load_image(self, path):
        # Load the image using Pillow and convert to a NumPy array
        img = Image.open(path)
        return np.array(img)


import six
import numpy as np
from PIL import Image

class NonUniformImageFileAccessor (object):
    def __init__(self, paths):
        # Paths is a list of file paths
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, six.integer_types + (np.integer,)):
            return self._load_image(self.paths[index])
        elif isinstance(index, np.ndarray):
            if index.ndim != 1:
                raise ValueError('index array should only have 1 dimension, '
                    'not {}'.format(index.ndim))
            return [self._load_image(self.paths[i])
                    for i in index]
        else:
            raise TypeError('index should be an integer or a NumPy '
                            'array, not a {}'.format(type(index)))

    # Define a helper method for loading an image
    def _load_image(self, path):
        # Load the image using Pillow
        return Image.open(path)


def augment_batch(batch_X, batch_y):
    out_X = []
    # For each PIL Image in `batch_X`:
    for img in batch_X:
        # Resize to 64 x 64
        img = img.resize((64, 64))

        # PIL allows you to easily get the image data as
        # a NumPy array
        x = np.array(img)

        out_X.append(x)

    # Stack the images into one array
    out_X = np.stack(out_X, axis=0)

    return (out_X, batch_y)
# ---- end of seed code ----------------------------------------------------------------------

N_IMAGES = 150  # two full batches of 64 and a short one


@pytest.fixture
def uniform_folder(tmp_path):
    write_images(tmp_path, [(f"img{k:03d}.jpg", (20, 16)) for k in range(N_IMAGES)], seed=1)
    return str(tmp_path)


@pytest.fixture
def dogs_vs_cats(tmp_path):
    rng = np.random.RandomState(0)
    names = [(f"{'dog' if k % 3 else 'cat'}.{k}.jpg", (int(rng.randint(40, 90)), int(rng.randint(40, 90))))
             for k in range(N_IMAGES)]
    write_images(tmp_path / "train", names, seed=2)
    return str(tmp_path)


def _expected_order(n):
    order = np.random.RandomState(12345).permutation(n)
    return [order[i:i + 64] for i in range(0, n, 64)]


def test_image_file_accessor_example(uniform_folder):
    # ---- seed code ----
    import glob
    import os

    # Put your dataset path here
    PATH = uniform_folder

    # Get image paths
    image_paths = glob.glob(os.path.join(PATH, '*.jpg'))

    # Build our array-like image file accessor
    train_X = ImageFileAccessor(image_paths)

    # Let's assume `train_y` is a NumPy array
    train_y = np.arange(len(image_paths)) * 7

    # Mixing custom array types with NumPy arrays is fine
    ds = data_source.ArrayDataSource([train_X, train_y])

    batches = []
    for (batch_X, batch_y) in ds.batch_iterator(
            batch_size=64, shuffle=np.random.RandomState(12345)):
        # Process batches here...
        batches.append((batch_X, batch_y))
    # ---- end of seed code ----

    expected = _expected_order(N_IMAGES)
    assert [len(b[0]) for b in batches] == [64, 64, 22]
    for (batch_X, batch_y), idx in zip(batches, expected):
        assert batch_X.shape == (len(idx), 16, 20, 3) and batch_X.dtype == np.uint8
        np.testing.assert_array_equal(batch_X, np.stack([np.array(Image.open(image_paths[i])) for i in idx]))
        np.testing.assert_array_equal(batch_y, train_y[idx])

    # The same example with our concurrent accessor in place of ImageFileAccessor: same batches.
    with DatasetAccessor(FileImageDataset(image_paths), num_fetch_workers=16) as fast_X:
        fast_ds = data_source.ArrayDataSource([fast_X, train_y])
        for (fx, fy), (bx, by) in zip(fast_ds.batch_iterator(batch_size=64, shuffle=np.random.RandomState(12345)),
                                      batches):
            np.testing.assert_array_equal(fx, bx)
            np.testing.assert_array_equal(fy, by)

    # The seed's error behaviour, which our accessor reproduces.
    for acc in (train_X, DatasetAccessor(FileImageDataset(image_paths))):
        with pytest.raises(ValueError, match="index array should only have 1 dimension, not 2"):
            acc[np.zeros((2, 3), dtype=int)]
        with pytest.raises(TypeError, match="index should be an integer or a NumPy array, not a <class 'str'>"):
            acc["0"]


def _run_kaggle_example(PATH):
    # ---- seed code ----
    import glob
    import os

    # Get paths to the training set images
    image_paths = glob.glob(os.path.join(PATH, 'train', '*.jpg'))

    # Build our array-like image file accessor
    train_X = NonUniformImageFileAccessor(image_paths)

    # Construct our ground truths as a NumPy array
    # The ground truth class is determined by the prefix
    train_y = [(1 if os.path.basename(p).startswith('dog') else 0)
               for p in image_paths]
    train_y = np.array(train_y, dtype=np.int32)

    # Mixing custom array types with NumPy arrays is fine
    kaggle_ds = data_source.ArrayDataSource([train_X, train_y])

    # Apply augmentation function
    kaggle_ds = kaggle_ds.map(augment_batch)

    batches = []
    for (batch_X, batch_y) in kaggle_ds.batch_iterator(
            batch_size=64, shuffle=np.random.RandomState(12345)):
        # Process batches here...
        batches.append((batch_X, batch_y))
    # ---- end of seed code ----
    return image_paths, train_X, train_y, kaggle_ds, batches


def test_non_uniform_image_file_accessor_example(dogs_vs_cats):
    image_paths, train_X, train_y, kaggle_ds, batches = _run_kaggle_example(dogs_vs_cats)
    sizes = {Image.open(p).size for p in image_paths}
    assert len(sizes) > 10  # the images really are of varying sizes
    assert isinstance(train_X[np.array([0, 1])], list)
    assert [len(b[0]) for b in batches] == [64, 64, 22]
    for (batch_X, batch_y), idx in zip(batches, _expected_order(N_IMAGES)):
        assert batch_X.shape == (len(idx), 64, 64, 3)
        expected_y = [1 if "dog" in image_paths[i].rsplit("/", 1)[-1] else 0 for i in idx]
        assert batch_y.tolist() == expected_y
        np.testing.assert_array_equal(batch_X[0], np.array(Image.open(image_paths[idx[0]]).resize((64, 64))))


@pytest.mark.parametrize("pool_kind", ["thread", "process"])
def test_parallel_batch_example(dogs_vs_cats, pool_kind):
    image_paths, train_X, train_y, ds, serial = _run_kaggle_example(dogs_vs_cats)
    # ---- seed code (parallel_batch), with the pool chosen by the test ----
    if pool_kind == "thread":
        # Build a pool of 4 worker threads:
        th_pool = work_pool.WorkerThreadPool(processes=4)
    else:
        # Build a pool of 4 worker processes (2 here: this machine has 2 cores):
        th_pool = work_pool.WorkerProcessPool(processes=2)

    # Construct a parallel data source that prepares mini-batches in the
    # background. It wraps the existing data source `ds` and will try
    # to keep a buffer of 32 mini-batches full to eliminate latency:
    par_ds = th_pool.parallel_data_source(ds, batch_buffer_size=32)

    # As soon as we create an iterator, it will start filling its
    # buffer; lets create an iterator right now to get it going in
    # the background:
    par_iter = par_ds.batch_iterator(
        batch_size=64, shuffle=np.random.RandomState(12345))

    batches = []
    for (batch_X, batch_y) in par_iter:
        # Process batches here...
        batches.append((batch_X, batch_y))
    # ---- end of seed code ----
    th_pool.close()
    assert len(batches) == len(serial) == 3
    for (px, py), (sx, sy) in zip(batches, serial):
        np.testing.assert_array_equal(px, sx)
        np.testing.assert_array_equal(py, sy)
