# expect: runtime
# 1 / 0 in Python at trace time
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    scale = 1 / 0
    update = g * scale
    return update, var1, var2
