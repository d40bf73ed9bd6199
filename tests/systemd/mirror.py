"""Prints the Debian mirror apt on this machine uses, for a suite:

    mirror.py SUITE             the archive (for bookworm, trixie, ...)
    mirror.py SUITE-security    the security archive

The mirror is the same for every release, so the host's own stanzas answer
for another release too: the one naming SUITE if any, else the first that
names a suite of the same kind (a release, or a -security one).
Falls back to deb.debian.org."""
import glob
import re
import sys

suite = sys.argv[1]
security = suite.endswith("-security")
exact, same_kind = [], []


def add(uris, suites):
    if suite in suites:
        exact.extend(uris)
    elif any(s.endswith("-security") == security and (security or "-" not in s) for s in suites):
        same_kind.extend(uris)


for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*")):
    try:
        text = open(path).read()
    except OSError:
        continue
    if path.endswith(".sources"):
        for stanza in re.split(r"\n\s*\n", text):
            f = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    k, v = line.split(":", 1)
                    f[k.strip().lower()] = v.split()
            if "deb" in f.get("types", []) and "main" in f.get("components", []):
                add(f.get("uris", []), f.get("suites", []))
    elif path.endswith(".list") or path == "/etc/apt/sources.list":
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
            if len(words) >= 4 and words[0] == "deb" and "main" in words[3:]:
                add([words[1]], [words[2]])
found = exact + same_kind
print(found[0] if found else
      "http://deb.debian.org/debian-security" if security else "http://deb.debian.org/debian")
