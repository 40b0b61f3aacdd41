"""Read CPU time and memory of a server's processes from /proc.

A server is a process tree: nginx is a master plus workers, h2o forks a helper
(neverbleed, the TLS key process) and a backtrace annotator, lariat is one
process with threads. /proc/PID/stat and /proc/PID/status already cover every
thread of a process, so summing over the tree covers everything the server runs.
"""
import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid):
    """Fields of /proc/PID/stat after the command name (which may hold spaces
    and parentheses, hence the split at the last ')'): index 0 is field 3."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    return s[s.rfind(")") + 2:].split()


def tree(root):
    """root and all its descendants that are alive now."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(name)[1])
        except (OSError, IndexError, ValueError):
            continue  # exited while we were looking
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if os.path.exists(f"/proc/{pid}"):
            out.append(pid)
            todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids):
    """(user, system) CPU seconds consumed so far by these processes."""
    user = system = 0
    for pid in pids:
        try:
            f = _stat_fields(pid)
        except OSError:
            continue
        user += int(f[11])    # field 14, utime, all threads
        system += int(f[12])  # field 15, stime
    return user / CLK_TCK, system / CLK_TCK


def start_time(pid):
    """Start time of a process (field 22), to tell it from a later one with the
    same PID; None once it has exited."""
    try:
        return int(_stat_fields(pid)[19])
    except OSError:
        return None


def rss_kib(pids):
    """Sum of VmRSS (KiB) over these processes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total
