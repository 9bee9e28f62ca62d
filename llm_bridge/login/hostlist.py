"""Expand SLURM hostlists ("osk-gpu[51-53,55]", "node1,node2") the way `scontrol show hostnames` does."""

import re

from llm_bridge.text import split_top_level

MAX_HOSTS = 4096  # far beyond any team's partition; a typo like node[1-999999999] stops here, not in MemoryError
_ITEM = re.compile(r"^([^\[\],]*)(?:\[([^\[\]]+)\])?([^\[\],]*)$")


def expand(hostlist: str) -> list[str]:
    """Return the host names of a hostlist expression; ValueError on malformed input."""
    hosts: list[str] = []
    for item in split_top_level(hostlist.strip()):
        item = item.strip()
        match = _ITEM.match(item)
        if not item or not match:
            raise ValueError(f"cannot parse {item!r}")
        prefix, ranges, suffix = match.groups()
        if ranges is None:
            hosts.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            low, _, high = part.strip().partition("-")
            if not re.fullmatch(r"[0-9]{1,9}", low) or (high and not re.fullmatch(r"[0-9]{1,9}", high)):
                raise ValueError(f"cannot parse range {part!r} in {item!r}")
            high = high or low
            if int(high) < int(low):
                raise ValueError(f"range {part!r} in {item!r} runs backwards")
            if len(hosts) + int(high) - int(low) + 1 > MAX_HOSTS:
                raise ValueError(f"{hostlist!r} names more than {MAX_HOSTS} hosts")
            width = len(low)
            hosts.extend(f"{prefix}{n:0{width}d}{suffix}" for n in range(int(low), int(high) + 1))
    return hosts
