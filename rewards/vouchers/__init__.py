"""Compute vouchers (算力券, measure 9): applied for, issued, drawn on from metered usage and
settled, every movement of money an entry of the ledger (docs/vouchers.md).

Ledger accounts: ``fund:voucher:<year>`` → ``pool:voucher:<year>`` (the year's pool, funded at
its first issue), ``pool:voucher:<year>`` → ``voucher:<id>`` (issue), ``voucher:<id>`` →
``receivable:provider:<enterprise id>`` (a draw), back the other way for an adjustment that
gives back, ``receivable:…`` → ``paid:provider:<enterprise id>`` (a settlement paid), and
``voucher:<id>`` or ``receivable:…`` → ``pool:voucher:<year>`` (expiry, revocation, clawback).
"""
