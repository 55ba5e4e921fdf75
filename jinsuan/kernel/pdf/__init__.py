"""The platform's PDFs (the monthly report, the rewards' year, voucher statements): A4 pages
drawn by matplotlib (``layout``) in a font with Chinese glyphs found on the machine (``fonts``),
one definition for every room that writes one."""
