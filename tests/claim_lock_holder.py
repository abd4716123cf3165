"""Holds a study's claim lock in a process of its own, for tests/test_claim_lock.py.

Usage: ``python claim_lock_holder.py URL STUDY``. Prints ``trying``, takes the lock, prints
``acquired``; at the first line on stdin releases it and prints ``released``; exits when
stdin closes (so a lock that is not really released stays held until then).
"""
from __future__ import annotations

import sys

from dime_nas.search.storage import ClaimLock, open_storage

if __name__ == "__main__":
    url, study = sys.argv[1:3]
    lock = ClaimLock(url, open_storage(url), study)
    print("trying", flush=True)
    lock.acquire()
    print("acquired", flush=True)
    sys.stdin.readline()
    lock.release()
    print("released", flush=True)
    sys.stdin.read()
