#!/usr/bin/env python3
"""Fills the KEYS section of instacart-tokend.conf(5): runs the built
instacart-tokend --describe-config=json (the table of settings in
src/settings.c) and writes one roff paragraph per key in place of the
template's line MARKER.

    man-keys.py INSTACART-TOKEND TEMPLATE OUTPUT
"""
import json
import subprocess
import sys

MARKER = '.\\" the keys, generated: see man-keys.py\n'


def roff(text, literal=True):
    """Text safe as roff: backslashes escaped, no line starting a request;
    in a literal (a key, a value) '-' is the minus sign one types."""
    text = text.replace("\\", "\\e")
    if literal:
        text = text.replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def sentence(text):
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def keys_section(keys):
    out, section = [], None
    for k in keys:
        if k["section"] != section:
            section = k["section"]
            out.append(f".SS [{roff(section)}]")
        out.append(".TP")
        out.append(f".B {roff(k['key'])}")
        out.append(roff(sentence(k["help"]), literal=False))
        out.append(".br")
        facts = [f"\\fI{roff(k['type'])}\\fP"]
        if k["min"] is not None:
            facts.append(f"{roff(k['min'])} to {roff(k['max'])}")
        facts.append(f"default \\fB{roff(k['default'])}\\fP" if k["default"] is not None else "no default")
        facts.append("a reload applies it" if k["reload"] == "applies" else "needs a restart")
        out.append(roff_join(facts))
    return "\n".join(out)


def roff_join(facts):
    return "; ".join(facts) + "."


def main():
    exe, template, output = sys.argv[1:4]
    described = subprocess.run([exe, "--describe-config=json"], check=True, capture_output=True, text=True)
    keys = json.loads(described.stdout)
    with open(template) as f:
        text = f.read()
    if text.count(MARKER) != 1:
        sys.exit(f"{template}: expected the line {MARKER!r} once")
    with open(output, "w") as f:
        f.write(text.replace(MARKER, keys_section(keys) + "\n"))


if __name__ == "__main__":
    main()
