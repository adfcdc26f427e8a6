"""Runs asyncpg's own unittest suite against the server named by PGHOST/PGPORT and records
every test's outcome, one JSON object per line, as it goes (a run killed by the watchdog
keeps what it recorded). Started by asyncpg_suite.py, once per target, with the pinned
asyncpg on PYTHONPATH and the suite's `tests/` package under SUITE_DIR.

usage: asyncpg_runner.py SUITE_DIR EXCLUDE_FILE OUT_JSONL [--skip ID ...]

Each line of OUT_JSONL: {"event": "start", "id": ...} before a test runs, then
{"event": "end", "id": ..., "status": "pass|fail|error|skip|xfail|xpass", "message": ...,
"seconds": ...}. A test that hangs past HANG_SECONDS ends the process (faulthandler dumps
every thread's stack to stderr); the caller records it and runs the rest in a new process.
"""

import faulthandler
import json
import os
import sys
import time
import traceback
import unittest

HANG_SECONDS = int(os.environ.get("PGMEMO_COMPAT_HANG_SECONDS", "120"))


def load_patterns(path):
    patterns = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                patterns.append(line)
    return patterns


def excluded(test_id, patterns):
    return any(test_id == p or test_id.startswith(p + ".") for p in patterns)


def flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from flatten(item)
        else:
            yield item


def short_message(err):
    """The exception's own lines (type and message), then the innermost frame of the test
    code, capped so one noisy traceback cannot flood the report."""
    exc_type, exc, tb = err
    text = "".join(traceback.format_exception_only(exc_type, exc)).strip()
    frames = traceback.extract_tb(tb)
    where = ""
    for frame in reversed(frames):
        if "/tests/" in frame.filename:
            where = f" [at {os.path.basename(frame.filename)}:{frame.lineno}]"
            break
    text = " ".join(text.split())
    if len(text) > 400:
        text = text[:400] + "..."
    return text + where


class RecordingResult(unittest.TestResult):
    def __init__(self, out):
        super().__init__()
        self.out = out
        self.started = {}
        self.outcome = {}

    def emit(self, obj):
        self.out.write(json.dumps(obj) + "\n")
        self.out.flush()

    def startTest(self, test):
        super().startTest(test)
        self.started[test.id()] = time.monotonic()
        self.outcome.pop(test.id(), None)
        self.emit({"event": "start", "id": test.id()})
        faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)

    def stopTest(self, test):
        faulthandler.cancel_dump_traceback_later()
        test_id = test.id()
        status, message = self.outcome.get(test_id, ("pass", ""))
        seconds = time.monotonic() - self.started.pop(test_id, time.monotonic())
        self.emit(
            {
                "event": "end",
                "id": test_id,
                "status": status,
                "message": message,
                "seconds": round(seconds, 3),
            }
        )
        print(f"{status:5} {seconds:7.2f}s {test_id}", flush=True)
        super().stopTest(test)

    def _set(self, test, status, message):
        test_id = test.id()
        # A failure beats a later success of a sub-test; the first failure's message stays.
        prev = self.outcome.get(test_id)
        if prev and prev[0] in ("fail", "error"):
            return
        if test_id not in self.started:
            # setUpClass/tearDownClass/module errors arrive without a start of their own.
            self.emit(
                {
                    "event": "end",
                    "id": test_id,
                    "status": status,
                    "message": message,
                    "seconds": 0,
                }
            )
            print(f"{status:5} {0:7.2f}s {test_id}", flush=True)
            return
        self.outcome[test_id] = (status, message)

    def addError(self, test, err):
        super().addError(test, err)
        self._set(test, "error", short_message(err))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set(test, "fail", short_message(err))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._set(test, "skip", str(reason))

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set(test, "xfail", short_message(err))

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set(test, "xpass", "unexpected success")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "fail" if issubclass(err[0], test.failureException) else "error"
            self._set(test, kind, f"{subtest.id()}: {short_message(err)}")


def main():
    suite_dir, exclude_file, out_path = sys.argv[1:4]
    skip = set(sys.argv[5:]) if len(sys.argv) > 4 and sys.argv[4] == "--skip" else set()
    patterns = load_patterns(exclude_file)
    only = [o for o in os.environ.get("PGMEMO_COMPAT_ONLY", "").split(",") if o]
    sys.path.insert(0, suite_dir)
    os.chdir(suite_dir)
    loader = unittest.TestLoader()
    discovered = loader.discover(
        os.path.join(suite_dir, "tests"), pattern="test_*.py", top_level_dir=suite_dir
    )
    tests = [
        t
        for t in flatten(discovered)
        if not excluded(t.id(), patterns)
        and t.id() not in skip
        and (not only or excluded(t.id(), only))
    ]
    # Keep unittest's class grouping (setUpClass once per class) by rebuilding one suite.
    suite = unittest.TestSuite(tests)
    with open(out_path, "a", encoding="utf-8") as out:
        result = RecordingResult(out)
        suite.run(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
