"""The container tests' own command runner: podman's exit race is sent again when the caller
says the command converges, and nothing else is."""

from pathlib import Path

import pytest

from tests.support.container_engine import EXIT_RACE_ATTEMPTS, checked


def flaky_command(tmp_path: Path, failures: int, message: str) -> list[str]:
    """A command that fails `failures` times with `message` on stderr, then prints "done"."""
    count = tmp_path / "count"
    count.write_text("0")
    script = (
        f"n=$(cat {count}); echo $((n + 1)) > {count}; "
        f'if [ "$n" -lt {failures} ]; then echo "{message}" >&2; exit 1; fi; echo done'
    )
    return ["sh", "-c", script]


def runs(tmp_path: Path) -> int:
    return int((tmp_path / "count").read_text())


RACE = "Error response from daemon: read /proc/20964/cgroup: no such process"


def test_the_podman_exit_race_is_sent_again(tmp_path: Path) -> None:
    command = flaky_command(tmp_path, EXIT_RACE_ATTEMPTS - 1, RACE)
    assert checked(command, {}, again_on_exit_race=True).strip() == "done"
    assert runs(tmp_path) == EXIT_RACE_ATTEMPTS


def test_a_race_that_persists_fails(tmp_path: Path) -> None:
    command = flaky_command(tmp_path, EXIT_RACE_ATTEMPTS, RACE)
    with pytest.raises(AssertionError, match="no such process") as failed:
        checked(command, {}, again_on_exit_race=True)
    message = str(failed.value)
    assert "-- attempt 1 (podman's exit race)" in message, "every attempt's errors"
    assert "-- attempt 2 (podman's exit race)" in message
    assert runs(tmp_path) == EXIT_RACE_ATTEMPTS


def test_any_other_failure_is_not_sent_again(tmp_path: Path) -> None:
    command = flaky_command(tmp_path, 1, "Error response from daemon: no such container")
    with pytest.raises(AssertionError, match="no such container"):
        checked(command, {}, again_on_exit_race=True)
    assert runs(tmp_path) == 1


def test_a_command_not_said_to_converge_is_not_sent_again(tmp_path: Path) -> None:
    command = flaky_command(tmp_path, 1, RACE)
    with pytest.raises(AssertionError, match="no such process"):
        checked(command, {})
    assert runs(tmp_path) == 1
