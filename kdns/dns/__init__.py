"""The DNS answers: a name parsed once (`names`), resolved against the store once
(`resolution`: the rule, the objects it read, the records), and encoded (`wire`; the large
service and SRV answers directly by `large_answers`). Pure: no sockets, no clock, no threads.
"""
