"""maiac.ir"""
