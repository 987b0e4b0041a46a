# expect: too_large
# nested loops multiplying past the unroll cap
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g
    for i in range(16):
        for j in range(16):
            update = update * 0.999
    return update, var1, var2
