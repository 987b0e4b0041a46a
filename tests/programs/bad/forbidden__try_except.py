# expect: forbidden
# try/except swallowing errors
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    try:
        update = g / var2
    except Exception:
        update = g
    return update, var1, var2
