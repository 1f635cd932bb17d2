"""Running one command of a step: output streamed to the console and the session's log, a time limit
after which the command's whole process group is stopped (SIGTERM, then SIGKILL)."""

import collections
import os
import signal
import subprocess
import threading
import time


def stop(proc) -> None:
    """Stop ``proc``'s process group: SIGTERM, then SIGKILL, 5 s apart."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue


def run(command, timeout, env, cwd, say, log, label=None):
    """Runs ``command``, its output streamed to the console and ``log``. Returns a dict: rc (None
    when it timed out or could not start), timed_out, seconds, tail (its last 60 lines)."""
    timeout = max(1.0, float(timeout))
    say(f"$ {' '.join(map(str, command))}    (limit {timeout:.0f} s)")
    tail = collections.deque(maxlen=60)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [str(c) for c in command],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )
    except OSError as e:
        say(f"could not start: {e}")
        return {"rc": None, "timed_out": False, "seconds": 0.0, "tail": [str(e)]}

    def pump():
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            print(line, flush=True)
            log.write(line + "\n")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        say(f"time limit of {timeout:.0f} s reached: stopping {label or command[0]}")
        stop(proc)
    reader.join(timeout=5)
    seconds = time.monotonic() - start
    rc = None if timed_out else proc.returncode
    say(f"-> {'timed out' if timed_out else f'exit {rc}'} after {seconds:.1f} s")
    return {"rc": rc, "timed_out": timed_out, "seconds": seconds, "tail": list(tail)}


def result_status(result, ok):
    """The status of a step whose command gave ``result``: timeout, else ok or failed."""
    if result["timed_out"]:
        return "timeout"
    return "ok" if ok else "failed"


def error_text(result, what):
    """What went wrong with ``what``: its time limit, or its exit code and last lines."""
    if result["timed_out"]:
        return f"{what} did not finish within its time limit"
    tail = [line for line in result["tail"] if line.strip()][-6:]
    return f"{what} exited {result['rc']}: " + " | ".join(tail)[-1500:]
