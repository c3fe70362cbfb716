"""``gatekeeper run``'s process: the supervisor, its workers, and what it does outside the engine.

The supervisor (:mod:`.supervisor`, with :mod:`.workers`) forks one NFQUEUE worker a
queue and applies what they report: kernel set entries and start/stop commands
(:mod:`.grantbook`, :mod:`.commands`), one-time lines marked used (:mod:`.onetime`), the
replay journal (:mod:`.replaylog`), the control socket (:mod:`.control`) and sd_notify
(:mod:`.systemd`).
"""
