# expect: runtime
# indexing past the shape tuple
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    n = w.shape[5]
    update = g / n
    return update, var1, var2
