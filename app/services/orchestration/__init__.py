"""Orchestration of task-run states: rules that decide a proposed change, grouped in policies.

A proposal becomes a `Transition`. A `Policy` is an ordered list of `Rule`s; each rule says
which transitions it governs (the run's current state type -> the proposed type) and, before
anything is written, may accept it, rename the proposed state, replace it (REJECT), or write
nothing (REJECT, WAIT, ABORT). After the write, rules act on what was written (caching).
"""
