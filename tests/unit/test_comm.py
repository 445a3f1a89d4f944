"""The communicator: rank 0's side effects shared with every rank, driven
through the fake (no process group)."""

import pytest

from dist_train.comm import Comm, FakeComm, SharedError
from dist_train.errors import DistTrainError, TrainingFailed
from dist_train.start import open_run_dir
from dist_train.config import load_config


def test_one_process_runs_the_function_and_returns_its_result():
    assert Comm().rank0_then_share(lambda: {"step": 3}) == {"step": 3}
    assert Comm().agree_any(True) and not Comm().agree_any(False)


def test_rank0_gets_its_own_error_and_every_other_rank_the_same_message_at_once(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the run directory's parent should be")
    cfg = load_config(None, [f"run.dir={blocker / 'run'}"])
    with pytest.raises(DistTrainError) as on_rank0:
        FakeComm(0, 2).rank0_then_share(lambda: open_run_dir(cfg))
    assert "cannot write the run directory" in str(on_rank0.value) and "choose a run.dir you can write" in str(on_rank0.value)
    # rank 1 runs nothing itself; it raises what rank 0 shared, with its exit status
    ran = []
    rank1 = FakeComm(1, 2, from_rank0=on_rank0.value)
    with pytest.raises(SharedError) as on_rank1:
        rank1.rank0_then_share(lambda: ran.append("rank 1 ran it"))
    assert str(on_rank1.value) == str(on_rank0.value) and on_rank1.value.exit_code == 2
    assert ran == [] and rank1.calls == ["rank0_then_share", "broadcast_object"]


def test_an_unexpected_error_on_rank0_reaches_the_others_as_a_failure():
    rank1 = FakeComm(1, 2, from_rank0=PermissionError(13, "Permission denied"))
    with pytest.raises(SharedError, match="PermissionError") as raised:
        rank1.rank0_then_share(lambda: None)
    assert raised.value.exit_code == 1
    failed = FakeComm(1, 2, from_rank0=TrainingFailed("lost contact"))
    with pytest.raises(SharedError, match="lost contact") as raised:
        failed.rank0_then_share(lambda: None)
    assert raised.value.exit_code == 1


def test_a_decision_is_shared():
    assert FakeComm(1, 2, peers_any=True).agree_any(False)
    assert not FakeComm(1, 2).agree_any(False)
