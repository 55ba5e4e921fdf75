"""The rewards room: the policy's money, paid from metered data.

Rewards (the policy's measures assessed from the platform's measurements), the ledger every
payment is posted to, and compute vouchers redeemed against metered usage. Like every room it
imports only the server kernel and the site contract, and reads the other rooms' figures
through the store, never their modules.
"""
