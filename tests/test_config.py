"""The configuration file: parsed as data, never executed; exact messages."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ksmtuned_py.config import (
    KEYS,
    UPSTREAM_PROCESS_REGEX,
    Assignment,
    ConfigError,
    Origin,
    load,
    parse_interval,
    parse_text,
)


def write(tmp_path, text: str, name="ksmtuned.conf"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def error_of(text: str, path="f") -> str:
    with pytest.raises(ConfigError) as e:
        parse_text(text, path)
    return str(e.value)


# --- what parses --------------------------------------------------------------------


def test_accepted_syntax():
    text = (
        "# a comment\n"
        "\n"
        "   \t\n"
        "KSM_NPAGES_MAX=2000\n"
        "export KSM_NPAGES_MIN=32   # trailing comment\n"
        "LOGFILE='/var/log/ksm tuned'\n"
        'DEBUG="yes please"\n'
        "KSM_PROCESS_REGEX=^kvm$\n"
        "  KSM_SLEEP_MSEC=\"2\"'0'\n"
        "KSM_THRES_CONST=\\$x\n"
        'PIDFILE="/run/a\\"b"\n'
        "KSM_MONITOR_INTERVAL=5\r\n"
        "KSM_METRICS_TEXTFILE=/a#b\"x$\"/$.d  # comment\n"
    )
    assert parse_text(text, "f") == [
        Assignment("KSM_NPAGES_MAX", "2000", 4),
        Assignment("KSM_NPAGES_MIN", "32", 5),
        Assignment("LOGFILE", "/var/log/ksm tuned", 6),
        Assignment("DEBUG", "yes please", 7),
        Assignment("KSM_PROCESS_REGEX", "^kvm$", 8),
        Assignment("KSM_SLEEP_MSEC", "20", 9),
        Assignment("KSM_THRES_CONST", "$x", 10),
        Assignment("PIDFILE", '/run/a"b', 11),
        Assignment("KSM_MONITOR_INTERVAL", "5", 12),
        Assignment("KSM_METRICS_TEXTFILE", "/a#bx$/$.d", 13),
    ]


def test_the_shipped_config_is_all_defaults():
    cfg = load("etc/ksmtuned.conf", environ={})
    assert cfg.warnings == []
    assert all(s.origin == Origin("default") for s in cfg.settings.values())
    assert set(cfg.settings) == set(KEYS)
    # every key is documented in the shipped file
    text = open("etc/ksmtuned.conf").read()
    assert all(f"# {key}=" in text for key in KEYS)


# --- what does not, with the exact message ----------------------------------------


@pytest.mark.parametrize(
    "line, message",
    [
        (
            "echo hi",
            "f:3: expected KEY=value, export KEY=value, a # comment or a blank line, found 'echo hi'",
        ),
        (
            "KSM_NPAGES_MAX=$(cat /etc/x)",
            "f:3: command substitution '$(' is not allowed; "
            "expected a literal value (the file is parsed, never executed)",
        ),
        (
            "KSM_NPAGES_MAX=`id`",
            "f:3: command substitution with '`' is not allowed; "
            "expected a literal value (the file is parsed, never executed)",
        ),
        (
            'LOGFILE="$HOME/log"',
            "f:3: expansion with '$' is not allowed; "
            "expected a literal value (the file is parsed, never executed)",
        ),
        (
            "DEBUG=1; rm -rf /",
            "f:3: ';' (a second command on the line) is not allowed; "
            "expected a literal value (the file is parsed, never executed)",
        ),
        (
            "DEBUG=1 touch /tmp/x",
            "f:3: unexpected text after the value of DEBUG: 'touch /tmp/x'; expected a # comment "
            "or the end of the line (quote values that contain spaces)",
        ),
        (
            "DEBUG=1 | tee",
            "f:3: '|' (a shell operator) is not allowed; expected a # comment "
            "or the end of the line (quote values that contain spaces)",
        ),
        ("LOGFILE='/var/log", "f:3: unterminated single quote; expected a closing ' on the same line"),
        ('LOGFILE="/var/log', 'f:3: unterminated double quote; expected a closing " on the same line'),
        ("LOGFILE=~/log", "f:3: '~' (tilde expansion) is not supported; expected a full path"),
        ("LOGFILE=/a:~/log", "f:3: '~' (tilde expansion) is not supported; expected a full path"),
        (
            "export KSM_PROCESS_REGEX=^qemu-{kvm,x}$",
            "f:3: an unquoted '{' after export is not supported; expected the value in quotes",
        ),
        (
            "KSM_NPAGES_MAX+=1",
            "f:3: expected KEY=value, export KEY=value, a # comment or a blank line, "
            "found 'KSM_NPAGES_MAX+=1'",
        ),
        (
            ". /etc/other.conf",
            "f:3: expected KEY=value, export KEY=value, a # comment or a blank line, "
            "found '. /etc/other.conf'",
        ),
        (
            "echo `id`",
            "f:3: command substitution with '`' is not allowed; "
            "expected KEY=value, export KEY=value, a # comment or a blank line",
        ),
        (
            "DEBUG=1 \\",
            "f:3: unexpected text after the value of DEBUG: '\\\\'; expected a # comment "
            "or the end of the line (quote values that contain spaces)",
        ),
    ],
)
def test_rejected_lines(line, message):
    assert error_of(f"# ok\nDEBUG=1\n{line}\nKSM_NPAGES_MIN=1\n") == message


def test_error_carries_path_and_line(tmp_path):
    path = write(tmp_path, "\n\nKSM_SLEEP_MSEC=$(reboot)\n")
    with pytest.raises(ConfigError) as e:
        load(path, environ={})
    assert (e.value.path, e.value.line, e.value.exit_code) == (path, 3, 78)
    assert str(e.value).startswith(f"{path}:3: command substitution")


# --- values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, message",
    [
        ("KSM_NPAGES_MAX=lots", "KSM_NPAGES_MAX: invalid value 'lots'; expected an integer"),
        ("KSM_NPAGES_MAX=1.5", "KSM_NPAGES_MAX: invalid value '1.5'; expected an integer"),
        (
            "KSM_NPAGES_MIN=064",
            "KSM_NPAGES_MIN: invalid value '064'; expected an integer without leading zeros "
            "(bash reads 0NN as octal)",
        ),
        (
            "KSM_THRES_CONST=9223372036854775808",
            "KSM_THRES_CONST: invalid value '9223372036854775808'; expected an integer that fits in 64 bits",
        ),
        ("KSM_MONITOR_INTERVAL=0", "KSM_MONITOR_INTERVAL: invalid value '0'; expected a positive number of seconds"),
        ("KSM_MONITOR_INTERVAL=-5", "KSM_MONITOR_INTERVAL: invalid value '-5'; expected a positive number of seconds"),
        ("KSM_MONITOR_INTERVAL=soon", "KSM_MONITOR_INTERVAL: invalid value 'soon'; expected a positive number of seconds"),
        ("KSM_MEMORY_METRIC=uss", "KSM_MEMORY_METRIC: invalid value 'uss'; expected rss or pss"),
        ("KSM_FREE_METRIC=free", "KSM_FREE_METRIC: invalid value 'free'; expected classic or available"),
        (
            "KSM_PROCESS_REGEX='qemu('",
            "KSM_PROCESS_REGEX: invalid value 'qemu('; expected a regular expression "
            "(missing ), unterminated subpattern at position 4)",
        ),
        ("PIDFILE=", "PIDFILE: invalid value ''; expected a path (remove the line for the default)"),
        # bash drops only space, tab and newline around an unquoted number; "64\r" breaks its [ -lt ]
        ("KSM_NPAGES_MIN='64\r'", "KSM_NPAGES_MIN: invalid value '64\\r'; expected an integer"),
        ("KSM_THRES_CONST='\f4096'", "KSM_THRES_CONST: invalid value '\\x0c4096'; expected an integer"),
    ],
)
def test_invalid_values_name_key_value_and_line(tmp_path, line, message):
    path = write(tmp_path, f"DEBUG=1\n{line}\n")
    with pytest.raises(ConfigError) as e:
        load(path, environ={})
    assert str(e.value) == f"{path}:2: {message}"
    assert e.value.line == 2


@pytest.mark.parametrize(
    "text, value",
    [("-50", -50), ("+300", 300), ("  7 ", 7), ("\t7", 7), ("0", 0), ("-9223372036854775808", -(1 << 63))],
)
def test_integers_with_signs(tmp_path, text, value):
    path = write(tmp_path, f"KSM_NPAGES_DECAY='{text}'\n")
    assert load(path, environ={})["KSM_NPAGES_DECAY"] == value


@pytest.mark.parametrize(
    "text, seconds", [("60", 60), ("0.5", 0.5), (".25", 0.25), ("2m", 120), ("1.5h", 5400), ("+3", 3)]
)
def test_interval_as_sleep_takes_it(text, seconds):
    assert parse_interval(text) == seconds


def test_invalid_environment_value_names_the_environment(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(str(tmp_path / "missing.conf"), environ={"KSM_NPAGES_BOOST": "many"})
    assert str(e.value) == "environment: KSM_NPAGES_BOOST: invalid value 'many'; expected an integer"
    assert e.value.line is None


# --- precedence -------------------------------------------------------------------------


def test_precedence_file_then_environment_then_default(tmp_path):
    path = write(
        tmp_path,
        "KSM_NPAGES_BOOST=111\n"
        "KSM_NPAGES_MAX=\n"  # empty in the file: the default, the environment is overwritten
        "KSM_NPAGES_MIN=5\n"
        "KSM_NPAGES_MIN=6\n",  # the last assignment wins
    )
    env = {
        "KSM_NPAGES_BOOST": "222",
        "KSM_NPAGES_MAX": "999",
        "KSM_NPAGES_DECAY": "-7",
        "KSM_THRES_COEF": "",  # empty in the environment: the default
        "DEBUG": "1",
    }
    cfg = load(path, environ=env)
    got = {k: (cfg[k], str(cfg.settings[k].origin)) for k in
           ("KSM_NPAGES_BOOST", "KSM_NPAGES_MAX", "KSM_NPAGES_MIN", "KSM_NPAGES_DECAY",
            "KSM_THRES_COEF", "DEBUG", "KSM_SLEEP_MSEC")}
    assert got == {
        "KSM_NPAGES_BOOST": (111, f"{path}:1"),
        "KSM_NPAGES_MAX": (1250, "default"),
        "KSM_NPAGES_MIN": (6, f"{path}:4"),
        "KSM_NPAGES_DECAY": (-7, "environment"),
        "KSM_THRES_COEF": (20, "default"),
        "DEBUG": ("1", "environment"),
        "KSM_SLEEP_MSEC": (10, "default"),
    }
    assert cfg.debug is True


def test_pidfile_uses_any_set_value_and_defaults_to_the_reference_path(tmp_path):
    missing = str(tmp_path / "none.conf")
    assert load(missing, environ={}).pidfile == "/var/run/ksmtune.pid"
    assert load(missing, environ={"PIDFILE": "/run/x.pid"}).pidfile == "/run/x.pid"
    with pytest.raises(ConfigError, match="^environment: PIDFILE: invalid value ''"):
        load(missing, environ={"PIDFILE": ""})


def test_missing_file_means_defaults(tmp_path):
    cfg = load(str(tmp_path / "none.conf"), environ={})
    assert cfg.file_found is False
    assert cfg.process_regex == UPSTREAM_PROCESS_REGEX
    assert (cfg.memory_metric, cfg.free_metric, cfg.max_kernel_pages, cfg.monitor_interval) == (
        "rss", "classic", None, 60.0)


def test_unreadable_config_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(str(tmp_path), environ={})
    assert str(e.value) == f"cannot read {tmp_path}: is a directory"


# --- unknown keys -----------------------------------------------------------------------


def test_unknown_keys_warn_with_the_nearest_known_key(tmp_path):
    path = write(tmp_path, "KSM_NPAGE_MAX=10\nKSM_MONITOR_INTERVALL=5\nFOO=bar\nksm_sleep_msec=3\n")
    cfg = load(path, environ={})
    assert cfg.warnings == [
        f"{path}:1: unknown key KSM_NPAGE_MAX, ignored (did you mean KSM_NPAGES_MAX?)",
        f"{path}:2: unknown key KSM_MONITOR_INTERVALL, ignored (did you mean KSM_MONITOR_INTERVAL?)",
        f"{path}:3: unknown key FOO, ignored",
        f"{path}:4: unknown key ksm_sleep_msec, ignored (did you mean KSM_SLEEP_MSEC?)",
    ]
    assert cfg["KSM_NPAGES_MAX"] == 1250 and cfg.monitor_interval == 60


# --- property: anything either parses or fails with a line number -----------------------

_pieces = st.sampled_from(
    ["KSM_NPAGES_MAX", "DEBUG", "PIDFILE", "export ", "=", "'", '"', "$", "(", ")", "`", ";", "#",
     " ", "\t", "\n", "\\", "~", "1", "-5", "x", "é", "\r", "\0", "KSM_MONITOR_INTERVAL=", "&"]
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=80), st.lists(_pieces, max_size=30).map("".join)))
def test_any_input_parses_or_fails_with_a_line_number(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("prop") / "k.conf"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    lines = text.encode("utf-8", errors="surrogatepass").count(b"\n") + 1
    try:
        cfg = load(str(path), environ={})
    except ConfigError as e:
        assert e.line is not None and 1 <= e.line <= lines
        assert str(e).startswith(f"{path}:{e.line}: ")
        assert "\n" not in str(e)
    else:
        assert set(cfg.settings) == set(KEYS)


def test_every_documented_example_in_the_shipped_config_is_valid(tmp_path):
    import re

    examples = [m.group(1) for m in re.finditer(r"^# ([A-Z_]+=.*)$", open("etc/ksmtuned.conf").read(), re.M)]
    assert len(examples) >= len(KEYS)
    for example in examples:
        path = write(tmp_path, example + "\n")
        cfg = load(path, environ={})
        key = example.split("=", 1)[0]
        assert cfg.warnings == [] and key in KEYS


# --- property: what the parser accepts, bash reads the same way ----------------------------------

_NAMES = ["K1", "K2", "KSM_X"]
_word_piece = st.one_of(
    st.sampled_from(["a", "1", "-5", "/p", "#", "$", "x$", "~", ":~", "=", "{a,b}", "*", "!", "[x]", "%", "+"]),
    st.text(alphabet="ab $`\\\"'#;:~=*!", max_size=6).map(lambda t: "'" + t.replace("'", "") + "'"),
    st.text(alphabet="ab $`\\'#;:~=*!", max_size=6).map(lambda t: '"' + t.replace('"', "") + '"'),
    st.sampled_from(["\\ ", "\\$", "\\'", '\\"', "\\\\", "\\a"]),
)
_line = st.one_of(
    st.builds(
        lambda exp, name, pieces, tail: f"{exp}{name}={''.join(pieces)}{tail}",
        st.sampled_from(["", "export ", "  "]),
        st.sampled_from(_NAMES),
        st.lists(_word_piece, max_size=4),
        st.sampled_from(["", " # c", "\t#", "  "]),
    ),
    st.sampled_from(["", "# x", "   "]),
)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@settings(max_examples=150, deadline=None)
@given(st.lists(_line, min_size=1, max_size=6))
def test_what_parses_is_what_bash_would_set(tmp_path_factory, lines):
    text = "\n".join(lines) + "\n"
    try:
        assignments = parse_text(text, "f")
    except ConfigError:
        return
    # Only text the parser accepted (assignments, nothing executable) is given to bash.
    path = tmp_path_factory.mktemp("bash") / "k.conf"
    path.write_text(text)
    out = subprocess.run(
        ["env", "-i", "bash", "--noprofile", "--norc", "-c",
         '. "$1" && for k in K1 K2 KSM_X; do printf "%s=%s\\0" "$k" "${!k-<unset>}"; done', "_", str(path)],
        capture_output=True, check=True,
    ).stdout.decode()
    ours = {name: "<unset>" for name in _NAMES}
    for a in assignments:
        ours[a.key] = a.value
    assert out.split("\0")[:-1] == [f"{k}={v}" for k, v in ours.items()]
