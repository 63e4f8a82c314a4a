"""Exactly-once effects over at-least-once Kafka (pure: no Faust, no Kafka).

journal    journal entries with before-images, and the recovery plan after a crash
lineage    where each output came from, and per-origin watermarks that skip repeats
control_auth  the keyed tag that makes lineage and end markers trustworthy
"""
