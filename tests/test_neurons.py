import json

import pytest
import torch

from polineurons.neurons import NeuronSet, NeuronSetMismatchError, neuron_parameters


def make(pairs, n_layers=3, d_mlp=8):
    return NeuronSet.from_pairs(pairs, n_layers, d_mlp, model_name="toy")


def test_views_are_sorted_and_unique():
    s = make([(2, 5), (0, 3), (2, 1), (2, 5)])
    assert len(s) == 3
    assert {k: v.tolist() for k, v in s.by_layer.items()} == {0: [3], 2: [1, 5]}
    assert list(s) == [(0, 3), (2, 1), (2, 5)]
    assert s.layer_counts() == [1, 0, 2]
    assert s.layers == [0, 2]
    assert s.fraction == pytest.approx(3 / 24)
    assert (2, 1) in s and (1, 1) not in s and (9, 9) not in s


def test_algebra():
    a, b = make([(0, 1), (1, 2), (2, 3)]), make([(1, 2), (2, 4)])
    assert list(a | b) == [(0, 1), (1, 2), (2, 3), (2, 4)]
    assert list(a & b) == [(1, 2)]
    assert list(a - b) == [(0, 1), (2, 3)]
    assert (a - b) | (a & b) == a
    assert not (a - b) & b
    assert a.union(b) == a | b and a.intersection(b) == a & b and a.difference(b) == a - b
    with pytest.raises(NeuronSetMismatchError):
        a | make([(0, 1)], d_mlp=9)


def test_mask_is_owned_by_the_set():
    mask = torch.zeros(2, 4, dtype=torch.bool)
    s = NeuronSet(mask)
    mask[0, 0] = True
    assert len(s) == 0


def test_out_of_range_indices_are_refused():
    with pytest.raises(NeuronSetMismatchError, match="index 8 in layer 1"):
        make([(1, 8)])
    with pytest.raises(NeuronSetMismatchError, match="Layer 3 is out of range"):
        make([(3, 0)])
    with pytest.raises(NeuronSetMismatchError, match="index -1"):
        make([(0, -1)])


def test_round_trip_through_files(tmp_path):
    s = make([(0, 7), (2, 0), (2, 6)]).with_provenance(method="test", top_k=30)
    written = s.save(tmp_path / "sets" / "general")
    assert written.name == "general.safetensors"
    sidecar = json.loads((tmp_path / "sets" / "general.json").read_text())
    assert sidecar["size"] == 3 and sidecar["n_layers"] == 3 and sidecar["d_mlp"] == 8
    for path in (written, tmp_path / "sets" / "general.json", tmp_path / "sets" / "general"):
        back = NeuronSet.load(path)
        assert back == s and back.model_name == "toy" and back.provenance == {"method": "test", "top_k": 30}
    empty = NeuronSet.empty(3, 8)
    empty.save(tmp_path / "empty")
    assert NeuronSet.load(tmp_path / "empty") == empty
    assert not list(tmp_path.rglob("*.tmp"))


def test_load_reports_missing_and_inconsistent_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.safetensors"):
        NeuronSet.load(tmp_path / "nothere")
    make([(0, 1)]).save(tmp_path / "s")
    sidecar = tmp_path / "s.json"
    data = json.loads(sidecar.read_text())
    data["size"] = 5
    sidecar.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="sidecar says 5"):
        NeuronSet.load(tmp_path / "s")


def test_validation_against_a_model(tiny_llama):
    NeuronSet.for_model(tiny_llama).validate_for(tiny_llama)
    with pytest.raises(NeuronSetMismatchError, match="3 layers x 96 neurons"):
        NeuronSet.empty(3, 97).validate_for(tiny_llama)
    with pytest.raises(NeuronSetMismatchError):
        NeuronSet.empty(4, 96).validate_for(tiny_llama)


def test_random_matched_keeps_layer_counts_and_is_seeded():
    s = make([(0, 1), (0, 2), (2, 3)], d_mlp=50)
    r1, r2, r3 = s.random_matched(0), s.random_matched(0), s.random_matched(1)
    assert r1.layer_counts() == s.layer_counts()
    assert r1 == r2 and r1 != r3
    disjoint = s.random_matched(0, exclude=s)
    assert disjoint.layer_counts() == s.layer_counts() and not disjoint & s
    with pytest.raises(ValueError, match="cannot draw"):
        make([(0, i) for i in range(5)], d_mlp=8).random_matched(
            0, exclude=make([(0, i) for i in range(5, 8)], d_mlp=8) | make([(0, 0)], d_mlp=8)
        )


def test_neuron_parameters_slice_along_neurons(tiny_model):
    d_mlp = tiny_model.cfg.d_mlp
    params = neuron_parameters(tiny_model, 1)
    roles = {name.split(".")[3] for name, _, _ in params}
    assert roles == {"gate", "in", "out"}
    for _, parameter, dim in params:
        assert parameter.shape[dim] == d_mlp
