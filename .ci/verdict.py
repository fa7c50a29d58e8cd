"""CI's verdict on a JUnit report: every test must run and pass, none skipped, at least one run.

Usage: python .ci/verdict.py REPORT.xml (exit 0 when green, 1 with the reason otherwise).
"""

import sys
import xml.etree.ElementTree as ET


def verdict(path: str) -> str | None:
    """Why the run is red, or None when it is green."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    tests = sum(int(suite.get("tests", 0)) for suite in suites)
    skipped = sum(int(suite.get("skipped", 0)) for suite in suites)
    failed = sum(int(suite.get(key, 0)) for suite in suites for key in ("failures", "errors"))
    print(f"ci: {tests} tests, {failed} failed, {skipped} skipped")
    if tests == 0:
        return "no test ran"
    if failed or skipped:
        return "every test must run and pass (none skipped)"
    return None


if __name__ == "__main__":
    reason = verdict(sys.argv[1])
    if reason:
        sys.exit(f"ci: {reason}")
