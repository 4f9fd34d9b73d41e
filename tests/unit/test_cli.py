"""The ``concord`` command line: ``serve`` starts without the other commands' modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from concord.cli import build_parser, main

OTHER_COMMAND_MODULES = ("concord.bench_cli", "concord.chaos_cli", "concord.cli_client",
                         "concord.cluster_cli", "concord.dkv_client", "concord.sim_cli")


def test_serve_alone_parses_as_the_whole_command_line_does() -> None:
    argv = ["serve", "--config", "node.toml", "--node-id", "n1", "--data-dir", "/d",
            "--client-listen", "127.0.0.1:7001", "--peer-listen", "127.0.0.1:7101"]
    alone = vars(build_parser(serve_only=True).parse_args(argv))
    whole = vars(build_parser().parse_args(argv))
    assert alone == whole
    assert alone["config"] == Path("node.toml") and alone["node_id"] == "n1"


def test_a_starting_node_does_not_import_the_other_commands() -> None:
    probe = ("import sys\n"
             "from concord.cli import main\n"
             "try:\n"
             "    main(['serve', '--help'])\n"
             "except SystemExit:\n"
             "    pass\n"
             f"print(sorted(set({OTHER_COMMAND_MODULES!r}) & set(sys.modules)))\n")
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           check=True, timeout=60).stdout
    assert "usage: concord serve" in shown
    assert shown.rstrip().endswith("[]"), shown


def test_a_bad_serve_option_is_refused_with_the_serve_usage(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--bogus"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_a_bad_configuration_file_is_refused_with_exit_64(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[node\n")
    assert main(["serve", "--config", str(config)]) == 64
    assert "concord serve: configuration error" in capsys.readouterr().err
