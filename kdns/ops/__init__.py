"""Everything around the answers that operators and laptops use: the HTTP endpoint (`http`,
`metrics`), forwarding outside the zones (`forward`), zone transfer (`transfer`), `kdns explain`
(`explain`), `kdns records` (`zonefile`) and `kdns resolver` (`resolver_config`).
"""
