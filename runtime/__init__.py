"""maiac.runtime"""
