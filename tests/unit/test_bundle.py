"""Model bundles and the Predictor, without training: the preprocessing is
training's to the bit, every unreadable bundle is one clear error, and the
user's code is checked against its digest."""

import shutil

import numpy as np
import pytest
import torch

from dist_train.bundle import FORMAT, load_model, read_bundle
from dist_train.config import ModelConfig
from dist_train.data.normalization import Normalizer, normalization_stats
from dist_train.data.sources import InputSpec
from dist_train.errors import DistTrainError
from dist_train.models import build_model
from dist_train.predictor import Predictor, PredictorSpec, config_recipe, object_recipe
from tests.conftest import REPO

SHAPE = (1, 4, 4)


def spec_and_network(model_cfg=ModelConfig(hidden_sizes=(8,)), mode="per_channel", loss="cross_entropy"):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(50, *SHAPE)).astype(np.uint8)
    normalizer = Normalizer(normalization_stats(train), SHAPE, mode, "cpu")
    spec = PredictorSpec(config_recipe(model_cfg), InputSpec(SHAPE, "uint8", normalizer.preprocess, mode,
                                                             ("a", "b", "c")), "classification", 3, loss)
    torch.manual_seed(0)
    return spec, build_model(model_cfg, SHAPE, 3), normalizer, train


def write_bundle(path, spec, network, **changes):
    state = {"format": FORMAT, "predictor": spec.state_dict(), "weights": network.state_dict(),
             "checkpoint": {"step": 7, "metrics": {}}, "versions": {"dist_train": "0.1.0"}, **changes}
    torch.save(state, path)
    return path


def test_the_predictor_preprocesses_raw_inputs_exactly_as_training_did():
    spec, network, normalizer, train = spec_and_network()
    predictor = Predictor(network, spec)
    raw = torch.from_numpy(train[:9])
    with torch.no_grad():
        assert torch.equal(predictor(raw), network(normalizer(raw)))  # bit for bit
    assert predictor.training is False
    assert predictor.predict(raw[0]).shape == () and predictor.predict(raw).shape == (9,)
    assert torch.allclose(predictor.predict_proba(raw).sum(1), torch.ones(9))
    with pytest.raises(DistTrainError, match=r"inputs of shape \(9, 16\) do not fit this model, which takes a batch "
                                             r"of samples of shape \(1, 4, 4\)"):
        predictor(raw.reshape(9, 16))


def test_a_bundle_loads_without_dist_trains_run_and_says_what_it_holds(tmp_path):
    spec, network, _, train = spec_and_network()
    model = load_model(write_bundle(tmp_path / "m.pt", spec, network))
    assert model.class_names == ("a", "b", "c") and model.input_dtype == "uint8" and model.info["checkpoint"]["step"] == 7
    raw = torch.from_numpy(train[:5])
    with torch.no_grad():
        assert torch.equal(model(raw), Predictor(network, spec)(raw))
    # loading leaves the caller's random streams alone (the network's initial weights are replaced)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    load_model(tmp_path / "m.pt")
    assert torch.equal(torch.rand(3), expected)


def test_a_file_that_is_not_a_bundle_is_one_clear_error(tmp_path):
    spec, network, _, _ = spec_and_network()
    with pytest.raises(DistTrainError, match="does not exist"):
        read_bundle(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(DistTrainError, match="is not a readable dist-train model bundle"):
        read_bundle(tmp_path / "junk.pt")
    torch.save(network.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(DistTrainError, match="no format record: a plain state_dict"):
        read_bundle(tmp_path / "weights.pt")
    write_bundle(tmp_path / "new.pt", spec, network, format="dist-train-bundle/9")
    with pytest.raises(DistTrainError, match=r"format 'dist-train-bundle/9'.*written by a newer dist-train"):
        read_bundle(tmp_path / "new.pt")
    torch.save({"format": FORMAT, "weights": np.arange(3)}, tmp_path / "pickled.pt")  # objects weights_only refuses
    with pytest.raises(DistTrainError, match="Unsupported global"):
        read_bundle(tmp_path / "pickled.pt")


def test_a_users_model_file_is_checked_against_its_digest_and_found_beside_the_bundle(tmp_path):
    shutil.copy(f"{REPO}/tests/user_project/nets.py", tmp_path / "nets.py")
    cfg = ModelConfig(class_path=f"{tmp_path / 'nets.py'}:SmallBNNet", init_args={"width": 4})
    spec, network, _, train = spec_and_network(cfg)
    bundle = write_bundle(tmp_path / "m.pt", spec, network)
    assert load_model(bundle).network.body[1].out_features == 4
    (tmp_path / "nets.py").write_text((tmp_path / "nets.py").read_text() + "\n# edited\n")
    with pytest.raises(DistTrainError, match=r"nets.py changed since it was trained.*--allow-changed-code"):
        load_model(bundle)
    assert load_model(bundle, allow_changed_code=True) is not None
    # the bundle and the file moved elsewhere together: the file is found beside the bundle
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(bundle, moved / "m.pt")
    shutil.copy(f"{REPO}/tests/user_project/nets.py", moved / "nets.py")
    (tmp_path / "nets.py").unlink()
    assert load_model(moved / "m.pt").network.body[1].out_features == 4
    (moved / "nets.py").unlink()
    with pytest.raises(DistTrainError, match=r"the model's code .*nets.py is not there, nor beside it"):
        load_model(moved / "m.pt")


def test_a_network_given_as_an_object_is_rebuilt_when_it_can_be_and_asked_for_when_not(tmp_path):
    from tests.user_project.nets import Needs, SmallBNNet

    needs = Needs(4)
    recipe = object_recipe(needs)
    assert recipe["kind"] == "object" and recipe["name"].endswith("Needs")
    spec, network, _, _ = spec_and_network()
    spec = PredictorSpec(recipe, spec.inputs, "classification", 3, "cross_entropy")
    bundle = write_bundle(tmp_path / "m.pt", spec, needs)
    with pytest.raises(DistTrainError, match=r"given to dist_train.fit as an object.*model=YourNet"):
        load_model(bundle)
    assert load_model(bundle, model=Needs(4)).network.layer.in_features == 4
    # a module-level function or class is a class_path: built again with the shapes it asks for
    assert object_recipe(SmallBNNet)["model"]["class_path"] == "tests.user_project.nets.SmallBNNet"
    assert object_recipe(lambda input_shape: None)["kind"] == "object"


def test_binary_cross_entropy_models_give_sigmoid_probabilities():
    spec, network, _, train = spec_and_network(loss="binary_cross_entropy")
    predictor = Predictor(network, spec)
    raw = torch.from_numpy(train[:4])
    with torch.no_grad():
        assert torch.equal(predictor.predict_proba(raw), torch.sigmoid(predictor(raw)))
