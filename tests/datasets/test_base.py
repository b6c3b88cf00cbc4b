import pytest
import torch

from metakit.datasets import ClassIndexedDataset


def test_from_tensors_groups_by_class_in_label_order():
    data = torch.arange(6).view(6, 1)
    labels = torch.tensor([7, 3, 7, 3, 3, 9])
    ds = ClassIndexedDataset.from_tensors(data, labels)
    assert ds.num_classes == 3
    assert ds.class_names == ["3", "7", "9"]
    assert ds.counts.tolist() == [3, 2, 1]
    assert ds.class_examples(0).flatten().tolist() == [1, 3, 4]
    assert ds.class_examples(1).flatten().tolist() == [0, 2]
    assert ds.min_count == 1 and len(ds) == 6 and ds.example_shape == (1,)


def test_to_float_scales_uint8_only():
    ds = ClassIndexedDataset(torch.tensor([[0], [255]], dtype=torch.uint8), torch.tensor([0, 2]))
    assert ds.to_float(ds.data).flatten().tolist() == [0.0, 1.0]
    x = torch.tensor([3.5])
    assert ds.to_float(x) is x


def test_subset_renumbers_classes():
    ds = ClassIndexedDataset.from_tensors(torch.arange(6).view(6, 1), torch.tensor([0, 0, 1, 1, 2, 2]))
    sub = ds.subset([2, 0])
    assert sub.class_names == ["2", "0"]
    assert sub.class_examples(0).flatten().tolist() == [4, 5]


@pytest.mark.parametrize(
    "data, offsets, names, match",
    [
        (torch.zeros(0, 1), torch.tensor([0]), None, "the dataset is empty"),
        (torch.zeros(3, 1), torch.tensor([0, 2]), None, r"offsets must start at 0 and end at len\(data\)=3"),
        (torch.zeros(3, 1), torch.tensor([0, 0, 3]), None, "class 0 has 0 examples"),
        (torch.zeros(3, 1), torch.tensor([0, 1, 3]), ["a"], "class_names has 1 entries but offsets describe 2 classes"),
    ],
)
def test_invalid_layouts_are_rejected(data, offsets, names, match):
    with pytest.raises(ValueError, match=match):
        ClassIndexedDataset(data, offsets, names)


def test_non_integer_offsets_are_rejected_not_truncated():
    with pytest.raises(
        TypeError,
        match=r"offsets has dtype torch.float32 \(tensor\(\[0.0000, 2.0000, 4.5000\]\)\); offsets are indices into "
        r"data and must be integers: pass an integer tensor, e.g. torch.tensor\(\[0, 20, 40\]\)",
    ):
        ClassIndexedDataset(torch.zeros(4, 1), [0, 2, 4.5])
    with pytest.raises(TypeError, match="offsets has dtype torch.float64"):
        ClassIndexedDataset(torch.zeros(4, 1), torch.tensor([0.0, 2.0, 4.0], dtype=torch.float64))
    with pytest.raises(TypeError, match="offsets has dtype torch.bool"):
        ClassIndexedDataset(torch.zeros(1, 1), torch.tensor([False, True]))
    # any integer dtype is fine, stored as int64
    ds = ClassIndexedDataset(torch.zeros(4, 1), torch.tensor([0, 2, 4], dtype=torch.int32))
    assert ds.offsets.dtype == torch.int64 and ds.counts.tolist() == [2, 2]
    assert ClassIndexedDataset(torch.zeros(4, 1), [0, 1, 4]).counts.tolist() == [1, 3]


def test_from_tensors_errors():
    with pytest.raises(ValueError, match=r"labels has shape \(2,\) but data has 3 examples"):
        ClassIndexedDataset.from_tensors(torch.zeros(3, 1), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="labels has dtype torch.float32"):
        ClassIndexedDataset.from_tensors(torch.zeros(2, 1), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="data is empty"):
        ClassIndexedDataset.from_tensors(torch.zeros(0, 1), torch.zeros(0, dtype=torch.long))
    ds = ClassIndexedDataset.from_tensors(torch.zeros(2, 1), torch.tensor([0, 1]))
    with pytest.raises(IndexError, match=r"class 2 out of range 0..1"):
        ds.class_examples(2)
