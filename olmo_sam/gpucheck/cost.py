def run_cost(sec, work): pass
