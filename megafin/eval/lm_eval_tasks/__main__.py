from megafin.eval.lm_eval_tasks import write_all

for path in write_all():
    print(path)
