"""Issue 12: the client's config file (``$FS_CONFIG``, else ``$XDG_CONFIG_HOME/fs/config.toml``):
an option beats the environment, which beats the file; a bad file is a usage error (exit 2)
naming the file and the line. Also ``fsclient help TOPIC`` and shell completion (the real
argcomplete protocol: the answer on file descriptor 8)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cli import cli_env, fsclient

KNOWN = "server, share, token, tls, tls_ca, tls_fingerprint, max_packet"


@pytest.fixture
def shares(server, tmp_path):
    """Three shares, each holding one file named after it."""
    for name in ("fromfile", "fromenv", "fromopt"):
        local = tmp_path / f"{name}.txt"
        local.write_text(name)
        made = fsclient("put", str(local), f"{name}.txt", "--share", name, "--create-share",
                        server=server)  # fmt: skip
        assert made.returncode == 0, made.stderr
    return server


def listed(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [line.split("\t")[0] for line in result.stdout.splitlines()]


def test_an_option_beats_the_environment_which_beats_the_file(shares, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'server = "{shares.address}"\nshare = "fromfile"\n')
    env = {"FS_CONFIG": str(config)}
    assert listed(fsclient("ls", env=env)) == ["fromfile.txt"]
    assert listed(fsclient("ls", env={**env, "FS_SHARE": "fromenv"})) == ["fromenv.txt"]
    option = fsclient("ls", "--share", "fromopt", env={**env, "FS_SHARE": "fromenv"})
    assert listed(option) == ["fromopt.txt"]
    # the server too: a dead address in the file loses to the environment, and one in the
    # environment to the option
    config.write_text('server = "127.0.0.1:1"\nshare = "fromfile"\n')
    assert listed(fsclient("ls", env={**env, "FS_SERVER": shares.address})) == ["fromfile.txt"]
    both = fsclient("ls", "--server", shares.address, env={**env, "FS_SERVER": "127.0.0.1:1"})
    assert listed(both) == ["fromfile.txt"]
    dead = fsclient("ls", env=env)
    assert (dead.returncode, dead.stderr) == (
        1, "fsclient: error: cannot connect to 127.0.0.1:1: Connection refused\n")  # fmt: skip


def test_the_file_is_found_under_xdg_config_home(shares, tmp_path):
    home = tmp_path / "xdg"
    (home / "fs").mkdir(parents=True)
    (home / "fs" / "config.toml").write_text(
        f'# my server\nserver = "{shares.address}"\nshare = "fromenv"\n'
    )
    assert listed(fsclient("ls", env={"XDG_CONFIG_HOME": str(home)})) == ["fromenv.txt"]
    elsewhere = tmp_path / "other.toml"
    elsewhere.write_text(f'server = "{shares.address}"\nshare = "fromopt"\n')
    named = fsclient("ls", env={"XDG_CONFIG_HOME": str(home), "FS_CONFIG": str(elsewhere)})
    assert listed(named) == ["fromopt.txt"]  # FS_CONFIG wins


UNKNOWN = "{path} line %d: unknown key %r (known: " + KNOWN + ")"
BAD_FILES = {
    "toml": ('server = "a:1"\nshare = \n',
             "{path}: not valid TOML: Invalid value (at line 2, column 9)"),
    "unknown-key": ('server = "a:1"\n\nsever = "b:2"\n', UNKNOWN % (3, "sever")),
    "unknown-table": ('[tls_options]\nca = "x"\n', UNKNOWN % (1, "tls_options")),
    "bool": ('share = "a"\ntls = "yes"\n', "{path} line 2: tls must be true or false"),
    "too-small": ("max_packet = 100\n", "{path} line 1: max_packet must be at least 4096"),
    "string": ("server = 7878\n", "{path} line 1: server must be a string"),
}  # fmt: skip


@pytest.mark.parametrize(("text", "error"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_config_file_is_a_usage_error_naming_the_file_and_line(tmp_path, text, error):
    config = tmp_path / "config.toml"
    config.write_text(text)
    result = fsclient("ls", env={"FS_CONFIG": str(config)})
    expected = "fsclient: error: " + error.format(path=config) + "\n"
    assert (result.returncode, result.stdout, result.stderr) == (2, "", expected)


def test_fs_config_must_name_a_file_that_exists(tmp_path):
    missing = tmp_path / "nope.toml"
    result = fsclient("shares", env={"FS_CONFIG": str(missing)})
    assert (result.returncode, result.stderr) == (
        2, f"fsclient: error: {missing} (FS_CONFIG): no such file\n")  # fmt: skip


def test_help_topics_are_shipped_and_help_works_with_a_broken_config(tmp_path):
    broken = tmp_path / "config.toml"
    broken.write_text("this is not toml\n")
    config = fsclient("help", "config", env={"FS_CONFIG": str(broken)})
    assert config.returncode == 0, config.stderr
    assert config.stdout.startswith("fsclient configuration file\n")
    assert "Precedence: an option beats the environment, which beats the file." in config.stdout
    topics = fsclient("help")
    assert (topics.returncode, topics.stdout.split()[-5:]) == (
        0, ["config", "shares", "sync", "exit-codes", "completion"])  # fmt: skip
    for topic in ("shares", "sync", "exit-codes", "completion"):
        shown = fsclient("help", topic)
        assert shown.returncode == 0 and len(shown.stdout.splitlines()) > 5, topic
    assert "--create-share" in fsclient("help", "shares").stdout
    bad = fsclient("help", "nope")
    assert bad.returncode == 2
    assert "argument TOPIC: invalid choice: 'nope'" in bad.stderr


def complete(line: str, shell: str = "bash", importtime: bool = False) -> tuple[list[str], str]:
    """What ``fsclient`` answers the shell for the command line *line* (cursor at its end),
    read from file descriptor 8 as the shell does; and its stderr."""
    python = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "fsclient"]
    env = cli_env({"_ARGCOMPLETE": "1", "_ARGCOMPLETE_SHELL": shell, "COMP_LINE": line,
                   "COMP_POINT": str(len(line)), "_ARGCOMPLETE_IFS": "\n"})  # fmt: skip
    result = subprocess.run(["bash", "-c", 'exec "$@" 8>&1 9>/dev/null', "bash", *python],
                            env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    words = [word.rstrip() for word in result.stdout.split("\n")]  # bash adds a space to one
    return words if result.stdout else [], result.stderr


def test_bash_completion_of_commands_options_and_topics():
    commands, _ = complete("fsclient s")
    assert commands == ["sync", "status", "shares"]
    assert complete("fsclient help e")[0] == ["exit-codes"]
    assert complete("fsclient put --cre")[0] == ["--create-share"]
    assert "--tls-fingerprint" in complete("fsclient ls --")[0]


def test_zsh_completion_has_descriptions():
    described, _ = complete("fsclient s", shell="zsh")
    assert "shares:list the shares the token opens: name, files, bytes" in described


def test_completion_does_not_load_asyncio():
    """A Tab must answer at once: only the parser runs, the commands' modules stay unloaded."""
    words, timings = complete("fsclient sh", importtime=True)
    assert words == ["shares"]
    loaded = {line.rsplit("|", 1)[-1].strip() for line in timings.splitlines() if "|" in line}
    assert "argcomplete" in loaded and "fsclient.cli" in loaded  # the check sees imports
    assert loaded.isdisjoint({"asyncio", "ssl", "sqlite3", "uvloop", "fsclient.client"})
