"""maiac.passes"""
