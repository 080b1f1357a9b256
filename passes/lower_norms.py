"""placeholder"""
RULES: dict = {}
