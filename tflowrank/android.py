"""Run the TFLite ``benchmark_model`` tool on an Android device over ``adb``.

``android_session(binary, serial)`` checks that ``adb`` is present and that one device is ready
(or the one ``serial`` names), checks the binary's architecture against the device's ABIs, makes
a folder of its own under ``/data/local/tmp/tflowrank/`` and pushes the binary there; each
``session.run(model, ...)`` pushes the model, runs the tool (under ``taskset`` for a CPU mask)
and pulls back the op-profiling CSV; leaving the session removes the folder, whatever happened.

The adb commands, in order (``S`` is the serial)::

    adb devices
    adb -s S shell getprop ro.product.cpu.abilist      (ro.product.cpu.abi if that is empty)
    adb -s S shell mkdir -p /data/local/tmp/tflowrank/<unique>
    adb -s S push <binary> /data/local/tmp/tflowrank/<unique>/benchmark_model
    adb -s S shell chmod 755 /data/local/tmp/tflowrank/<unique>/benchmark_model
    per model:
      adb -s S push <model> /data/local/tmp/tflowrank/<unique>/<i>_<name>.tflite
      adb -s S shell '[taskset MASK] .../benchmark_model --graph=... ; echo tflowrank-exit-status=$?'
      adb -s S pull .../<i>_<name>.csv <local temporary file>     (with op profiling)
    adb -s S shell 'rm -r /data/local/tmp/tflowrank/<unique> &&
                    { rmdir /data/local/tmp/tflowrank 2>/dev/null; true; }'

The exit status is echoed by the device's shell because ``adb shell`` only forwards it from
Android 7 on. A tool that overruns ``timeout`` is stopped (``pkill -f`` on the device).
"""

import contextlib
import re
import shlex
import shutil
import subprocess
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from .benchmark_tool import (
    EM_386,
    EM_AARCH64,
    EM_ARM,
    EM_RISCV,
    EM_X86_64,
    MACHINE_NAMES,
    benchmark_flags,
    check_output,
    elf_machine,
)
from .errors import ToolError

__all__ = ["AndroidDevice", "AndroidRun", "android_session", "parse_adb_devices", "select_device"]

REMOTE_ROOT = "/data/local/tmp/tflowrank"
_ABI_MACHINES = {
    "arm64-v8a": EM_AARCH64,
    "armeabi-v7a": EM_ARM,
    "armeabi": EM_ARM,
    "x86_64": EM_X86_64,
    "x86": EM_386,
    "riscv64": EM_RISCV,
}
_EXIT_MARK = "tflowrank-exit-status="
_ADB_TIMEOUT = 120.0  # seconds, for every adb command but the benchmark itself
_TAIL_CHARS = 4000


@dataclass(frozen=True)
class AndroidDevice:
    """The device a session runs on: its serial and the ABIs it runs, preferred first."""

    serial: str
    abis: tuple

    def __str__(self):
        return f"{self.serial} ({self.abis[0] if self.abis else 'unknown ABI'})"


@dataclass(frozen=True)
class AndroidRun:
    """One benchmark run: the adb command, the tool's output and the op-profiling CSV or None."""

    command: tuple
    output: str
    op_profile_csv: str | None


def parse_adb_devices(text):
    """``[(serial, state), ...]`` from the output of ``adb devices``.

    States are adb's: ``device`` (ready), ``unauthorized``, ``offline``, ``no permissions ...``,
    ``recovery``, ``sideload``... Daemon start-up lines (``* daemon ...``) are ignored.
    """
    devices = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("*") or line.startswith("List of devices"):
            continue
        parts = re.split(r"\s+", line, maxsplit=1)
        if len(parts) == 2:
            serial, state = parts
            devices.append((serial, state.split(" usb:")[0].strip()))
    return devices


def select_device(devices, serial=None, command=("adb", "devices"), output=""):
    """The serial to use among ``devices`` (``parse_adb_devices``); ``ToolError`` if none fits."""
    listed = ", ".join(f"{s} ({state})" for s, state in devices) or "none"
    if serial is not None:
        states = dict(devices)
        if serial not in states:
            raise ToolError(
                f"Android device {serial!r} is not connected; adb lists: {listed}.", command, output
            )
        if states[serial] != "device":
            raise _not_ready(serial, states[serial], command, output)
        return serial
    if not devices:
        raise ToolError(
            "No Android device is connected: `adb devices` lists none. Connect one with USB "
            "debugging on (or start an emulator) and try again.",
            command,
            output,
        )
    ready = [s for s, state in devices if state == "device"]
    if len(ready) == 1:
        return ready[0]
    if len(ready) > 1:
        raise ToolError(
            f"Several Android devices are ready ({', '.join(ready)}): choose one with "
            "serial=... (--serial on the command line).",
            command,
            output,
        )
    raise _not_ready(*devices[0], command, output)  # none is ready: say why for the first


@contextlib.contextmanager
def android_session(binary, serial=None, timeout=600.0):
    """Set up a device for ``benchmark_model`` runs; yield an ``_Session``; clean up on exit.

    Args:
        binary: the Android build of ``benchmark_model`` on this host (an ELF executable).
        serial: the device to use; ``None`` takes the one ready device.
        timeout: seconds each benchmark run may take before it is stopped.

    Raises:
        ToolError: no ``adb``, no device, several and no ``serial``, a device unauthorized or
            offline, a binary built for another architecture, an adb command that fails.
    """
    binary = Path(binary)
    machine = elf_machine(binary)
    if machine is None:
        raise ValueError(
            "`benchmark_binary` is not an ELF executable; target='android' needs the Android "
            f"build of benchmark_model (e.g. android_aarch64). Received: benchmark_binary="
            f"{str(binary)!r}"
        )
    adb = shutil.which("adb")
    if adb is None:
        raise ToolError(
            "adb was not found on PATH: install the Android SDK platform-tools and put the "
            "folder holding adb on PATH."
        )
    session = _Session(adb, timeout)
    output = session.adb("devices")
    session.device_serial = select_device(parse_adb_devices(output), serial, session.last_command, output)
    abis = session.abis()
    session.device = AndroidDevice(session.device_serial, abis)
    accepted = {_ABI_MACHINES.get(abi) for abi in abis}
    if machine not in accepted:
        raise ToolError(
            f"benchmark_binary is built for {MACHINE_NAMES.get(machine, f'ELF machine {machine}')},"
            f" but device {session.device_serial} runs {', '.join(abis) or 'an unknown ABI'}: "
            "use the matching Android build (android_aarch64 for arm64-v8a, android_arm for "
            "armeabi-v7a).",
            session.last_command,
            ", ".join(abis),
        )
    session.remote_dir = f"{REMOTE_ROOT}/{uuid.uuid4().hex[:12]}"
    try:
        session.shell(f"mkdir -p {shlex.quote(session.remote_dir)}")
        session.remote_binary = f"{session.remote_dir}/benchmark_model"
        session.adb("push", str(binary), session.remote_binary)
        session.shell(f"chmod 755 {shlex.quote(session.remote_binary)}")
        yield session
    finally:
        session.cleanup()


class _Session:
    """adb calls against one device; ``run`` is the one meant for callers."""

    def __init__(self, adb, timeout):
        self._adb = adb
        self.timeout = timeout
        self.device_serial = None
        self.device = None
        self.remote_dir = None
        self.remote_binary = None
        self.last_command = ()
        self._models = 0

    def run(self, model, *, cpu_mask=None, op_profiling=False, **flags):
        """Push ``model``, run the tool with ``benchmark_flags(**flags)``, pull its CSV back."""
        self._models += 1
        name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(model).stem)
        stem = f"{self.remote_dir}/{self._models}_{name}"
        remote_model, remote_csv = f"{stem}.tflite", f"{stem}.csv"
        self.adb("push", str(model), remote_model)
        tool = [
            self.remote_binary,
            *benchmark_flags(remote_model, op_profile_file=remote_csv if op_profiling else None, **flags),
        ]
        if cpu_mask is not None:
            tool = ["taskset", cpu_mask, *tool]
        script = f"{shlex.join(tool)}; echo {_EXIT_MARK}$?"
        command = self._command("shell", script)
        try:
            result = subprocess.run(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                timeout=self.timeout,
            )
        except subprocess.TimeoutExpired as error:
            self._stop_tool()
            tail = (
                error.output.decode("utf-8", "replace") if isinstance(error.output, bytes) else error.output
            )
            raise ToolError(
                f"benchmark_model did not finish within {self.timeout:g} s on device "
                f"{self.device} running {str(model)!r}; it was stopped. Pass a larger timeout, "
                "or fewer runs.",
                command,
                (tail or "")[-_TAIL_CHARS:],
            ) from None
        output, status = _split_exit_status(result.stdout, result.returncode)
        check_output(output, status, command, what=f"on device {self.device} running {str(model)!r}")
        csv_text = self._pull(remote_csv) if op_profiling else None
        return AndroidRun(tuple(command), output, csv_text)

    def adb(self, *args, check=True):
        """Run ``adb -s SERIAL args`` (no ``-s`` before a device is chosen); return its output."""
        command = self._command(*args)
        self.last_command = tuple(command)
        try:
            result = subprocess.run(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                timeout=_ADB_TIMEOUT,
            )
        except subprocess.TimeoutExpired as error:
            raise ToolError(
                f"adb did not answer within {_ADB_TIMEOUT:g} s.", command, str(error.output or "")
            ) from None
        except OSError as error:
            raise ToolError(f"adb could not start: {error}", command) from None
        if check and result.returncode != 0:
            raise ToolError(
                f"adb {args[0]} failed (exit status {result.returncode}).",
                command,
                result.stdout[-_TAIL_CHARS:],
            )
        return result.stdout if check else result

    def shell(self, script, check=True):
        return self.adb("shell", script, check=check)

    def abis(self):
        abis = self.shell("getprop ro.product.cpu.abilist").strip()
        if not abis:  # before Android 5
            abis = self.shell("getprop ro.product.cpu.abi").strip()
        return tuple(abi.strip() for abi in abis.split(",") if abi.strip())

    def cleanup(self):
        if self.remote_dir is None:
            return
        script = f"rm -r {shlex.quote(self.remote_dir)} && {{ rmdir {REMOTE_ROOT} 2>/dev/null; true; }}"
        try:
            result = self.shell(script, check=False)
        except ToolError as error:
            result = None
            reason = str(error).splitlines()[0]
        else:
            reason = f"exit status {result.returncode}: {result.stdout.strip()[-300:]}"
        if result is None or result.returncode != 0:
            warnings.warn(
                f"tflowrank could not remove {self.remote_dir} from device {self.device_serial} "
                f"({reason}); remove it with: adb -s {self.device_serial} shell rm -r "
                f"{self.remote_dir}",
                RuntimeWarning,
                stacklevel=3,
            )
        self.remote_dir = None

    def _command(self, *args):
        prefix = [self._adb] if self.device_serial is None else [self._adb, "-s", self.device_serial]
        return [*prefix, *args]

    def _pull(self, remote):
        with tempfile.TemporaryDirectory(prefix="tflowrank-adb-") as work:
            local = Path(work) / Path(remote).name
            result = self.adb("pull", remote, str(local), check=False)
            if result.returncode != 0 or not local.is_file():
                return None  # a tool too old to write it: the tables are in its output
            return local.read_text(errors="replace")

    def _stop_tool(self):
        with contextlib.suppress(ToolError):
            self.shell(f"pkill -f {shlex.quote(self.remote_binary)}", check=False)


def _not_ready(serial, state, command, output):
    if state == "unauthorized":
        return ToolError(
            f"Android device {serial} is unauthorized: unlock it and accept the 'Allow USB "
            "debugging?' prompt, then try again.",
            command,
            output,
        )
    if state == "offline":
        return ToolError(
            f"Android device {serial} is offline: reconnect it (or run `adb reconnect`) and try again.",
            command,
            output,
        )
    return ToolError(f"Android device {serial} is not ready (state: {state}).", command, output)


def _split_exit_status(output, adb_status):
    """The output without the echoed exit-status line, and that status (adb's if it is absent)."""
    lines = output.splitlines(keepends=True)
    for i in range(len(lines) - 1, -1, -1):
        text = lines[i].strip()
        if text.startswith(_EXIT_MARK):
            try:
                status = int(text[len(_EXIT_MARK) :])
            except ValueError:
                break
            return "".join(lines[:i] + lines[i + 1 :]), status
    return output, adb_status
