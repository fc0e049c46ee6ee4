def run_bnb(sec, work): pass
